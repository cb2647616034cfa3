"""A role's tool permissions at SubmitJob: a job of a role may offer only the
tools its role names (the JobService over the dispatcher tests' fakes)."""

from __future__ import annotations

import pytest

from hearth.chat import Tool
from hearth.errors import PermissionDenied
from orchestratord.domain.roles import RoleBook, RoleSettings
from orchestratord.domain.service import JobService
from orchestratord.domain.validation import JobDraft, SubmitLimits
from tests.unit.test_orchestrator_dispatcher import Stack

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ROLES = RoleBook.of(
    {},
    {"tester": RoleSettings(tools=("pytest",), tools_given=True), "reader": RoleSettings(tools_given=True)},
)


def tool(name: str) -> Tool:
    return Tool(name, f"runs {name}", {"type": "object", "properties": {}})


async def test_a_role_offers_only_the_tools_it_may_use() -> None:
    async with Stack() as stack:
        jobs = JobService(
            stack.active,
            stack.store,
            stack.router,
            stack.publisher,
            stack.jobs._metrics,
            SubmitLimits(1000, 16, 600),
            roles=ROLES,
        )
        with pytest.raises(PermissionDenied) as refused:
            await jobs.submit(
                JobDraft(prompt="run them", role="tester", tools=(tool("pytest"), tool("shell")))
            )
        assert refused.value.reason == "TOOL_NOT_PERMITTED"
        assert refused.value.metadata == {"field": "spec.tools[1]", "role": "tester", "tool": "shell"}
        assert "its tools: pytest" in refused.value.message
        with pytest.raises(PermissionDenied) as none:
            await jobs.submit(JobDraft(prompt="read", role="reader", tools=(tool("pytest"),)))
        assert "its tools: none" in none.value.message
        assert stack.store.jobs == {}  # nothing was written
        allowed = await jobs.submit(JobDraft(prompt="run them", role="tester", tools=(tool("pytest"),)))
        assert allowed.job.spec.role == "tester"
        # A role without permissions (the built-in coder) and a job without tools pass.
        await jobs.submit(JobDraft(prompt="code", role="coder", tools=(tool("shell"),)))
        await jobs.submit(JobDraft(prompt="read", role="reader"))
