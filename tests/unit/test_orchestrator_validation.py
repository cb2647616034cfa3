"""Submission validation: each bad input names its field; defaults apply.
Also the token estimate. (Memory context rendering: test_orchestrator_context.py.)"""

from __future__ import annotations

import uuid

import pytest

from hearth.api.orchestrator.v1 import orchestrator_pb2 as pb
from hearth.api.router.v1 import router_pb2
from hearth.chat import ChatMessage, Tool
from hearth.errors import InvalidArgument
from orchestratord.api.convert import draft_from_request, spec_to_proto
from orchestratord.domain.jobs import JobSpec, Priority
from orchestratord.domain.validation import (
    JobDraft,
    SubmitLimits,
    estimate_prompt_tokens,
    parse_job_id,
    validate_submission,
)

pytestmark = pytest.mark.unit


def _nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


DEEP = _nested(40)
#: A pattern only a backtracking engine runs (a backreference).
BACKREFERENCE = {"type": "object", "properties": {"x": {"type": "string", "pattern": r"^(a+)\1$"}}}
LIMITS = SubmitLimits(max_prompt_chars=100, default_max_tokens=256, default_timeout_seconds=600)


@pytest.mark.parametrize(
    ("draft", "field", "reason"),
    [
        (JobDraft(prompt=""), "spec.prompt", "INVALID_FIELD"),
        (JobDraft(prompt=" \n\t "), "spec.prompt", "INVALID_FIELD"),
        (JobDraft(prompt="x" * 101), "spec.prompt", "PROMPT_TOO_LONG"),
        (JobDraft(prompt="hi", max_tokens=-1), "spec.max_tokens", "INVALID_FIELD"),
        (JobDraft(prompt="hi", max_tokens=0), "spec.max_tokens", "INVALID_FIELD"),
        (JobDraft(prompt="hi", temperature=2.5), "spec.temperature", "INVALID_FIELD"),
        (JobDraft(prompt="hi", temperature=-0.1), "spec.temperature", "INVALID_FIELD"),
        (JobDraft(prompt="hi", temperature=float("nan")), "spec.temperature", "INVALID_FIELD"),
        (JobDraft(prompt="hi", priority="urgent"), "spec.priority", "INVALID_FIELD"),
        (JobDraft(prompt="hi", request_id="not-a-uuid"), "request_id", "INVALID_FIELD"),
        (JobDraft(prompt="hi", use_memory_context=True), "spec.project_id", "INVALID_FIELD"),
        (JobDraft(prompt="hi", store_in_memory=True, project_id="  "), "spec.project_id", "INVALID_FIELD"),
        (JobDraft(prompt="hi", timeout_seconds=-1.0), "spec.timeout", "INVALID_FIELD"),
        (JobDraft(prompt="hi", paths=("a",) * 257), "spec.paths", "INVALID_FIELD"),
        (JobDraft(prompt="hi", paths=("ok", "")), "spec.paths[1]", "INVALID_FIELD"),
        (JobDraft(prompt="hi", paths=("x" * 4097,)), "spec.paths[0]", "INVALID_FIELD"),
        (JobDraft(prompt="hi", paths=("a\x00b",)), "spec.paths[0]", "INVALID_TEXT"),
        (JobDraft(prompt="hi\x00there"), "spec.prompt", "INVALID_TEXT"),
        (JobDraft(prompt="hi", labels={"team": "a\ud800"}), "spec.labels['team']", "INVALID_TEXT"),
        (
            JobDraft(messages=(ChatMessage("user", "lone \udc00 surrogate"),)),
            "spec.messages[0].content",
            "INVALID_TEXT",
        ),
        (JobDraft(prompt="hi", agent="bot\x00"), "spec.agent", "INVALID_TEXT"),
        (JobDraft(prompt="hi", tools=(Tool("t", "say \x00"),)), "spec.tools[0].description", "INVALID_TEXT"),
        (
            JobDraft(prompt="hi", tools=(Tool("t", parameters={"type": "object", "x": "\x00"}),)),
            "spec.tools[0].parameters_json",
            "INVALID_TEXT",
        ),
        (
            JobDraft(prompt="hi", tools=(Tool("t", parameters=DEEP),)),
            "spec.tools[0].parameters_json",
            "SCHEMA_TOO_DEEP",
        ),
        (
            JobDraft(prompt="hi", tools=(Tool("t", parameters={"type": "object", "d": "x" * 70_000}),)),
            "spec.tools[0].parameters_json",
            "SCHEMA_TOO_LARGE",
        ),
        (
            JobDraft(prompt="hi", tools=(Tool("t", parameters=BACKREFERENCE),)),
            "spec.tools[0].parameters_json",
            "UNSAFE_PATTERN",
        ),
        (JobDraft(prompt="hi", max_tokens=2_000_000), "spec.max_tokens", "INVALID_FIELD"),
        (JobDraft(prompt="hi", timeout_seconds=1e12), "spec.timeout", "INVALID_FIELD"),
        (JobDraft(prompt="hi", timeout_seconds=float("nan")), "spec.timeout", "INVALID_FIELD"),
        (JobDraft(prompt="hi", data_class="L9"), "spec.data_class", "INVALID_FIELD"),
        (JobDraft(prompt="hi", agent="a" * 257), "spec.agent", "INVALID_FIELD"),
        (JobDraft(prompt="hi", memory_context_tokens=-1), "spec.memory_context_tokens", "INVALID_FIELD"),
    ],
)
def test_each_bad_input_names_its_field(draft: JobDraft, field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(draft, LIMITS)
    assert caught.value.field == field
    assert caught.value.metadata["field"] == field
    assert caught.value.reason == reason


def test_defaults_apply_and_request_ids_are_canonical() -> None:
    request_id = uuid.uuid4()
    submission = validate_submission(JobDraft(prompt="hi", request_id=str(request_id).upper()), LIMITS)
    assert submission.request_id == str(request_id)
    spec = submission.spec
    assert spec.max_tokens == 256 and spec.timeout_seconds == 600 and spec.priority is Priority.INTERACTIVE
    explicit = validate_submission(
        JobDraft(prompt="x" * 100, max_tokens=7, priority="batch", timeout_seconds=2.5, temperature=2.0),
        LIMITS,
    ).spec
    assert (explicit.max_tokens, explicit.priority, explicit.timeout_seconds) == (7, Priority.BATCH, 2.5)
    assert validate_submission(JobDraft(prompt="hi"), LIMITS).request_id is None


def test_an_unknown_priority_enum_from_the_wire_is_rejected_by_field() -> None:
    request = pb.SubmitJobRequest(spec=pb.JobSpec(prompt="hi", priority=9))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(draft_from_request(request), LIMITS)
    assert caught.value.field == "spec.priority"
    unset = draft_from_request(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="hi")))
    assert unset.timeout_seconds is None and unset.priority == ""


def test_routing_facts_pass_validation_and_survive_the_wire_and_storage() -> None:
    paths = ("src/app.py", "/home/me/.ssh/id_rsa", "x" * 4096)
    request = pb.SubmitJobRequest(
        spec=pb.JobSpec(
            prompt="hi",
            paths=paths,
            data_class=router_pb2.DATA_CLASS_L2_SENSITIVE,
            agent="coder-1",
            memory_context_tokens=512,
        )
    )
    spec = validate_submission(draft_from_request(request), LIMITS).spec
    assert (spec.paths, spec.data_class, spec.agent, spec.memory_context_tokens) == (
        paths,
        "L2",
        "coder-1",
        512,
    )
    assert JobSpec.from_json(spec.to_json()) == spec
    back = spec_to_proto(spec)
    assert (list(back.paths), back.data_class, back.agent) == (
        list(paths),
        router_pb2.DATA_CLASS_L2_SENSITIVE,
        "coder-1",
    )
    unset = validate_submission(draft_from_request(pb.SubmitJobRequest(spec=pb.JobSpec(prompt="hi"))), LIMITS)
    assert unset.spec.data_class == "" and unset.spec.paths == ()
    unknown = pb.SubmitJobRequest(spec=pb.JobSpec(prompt="hi", data_class=9))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(draft_from_request(unknown), LIMITS)
    assert caught.value.field == "spec.data_class"


def test_job_ids_must_be_uuids() -> None:
    job_id = str(uuid.uuid4())
    assert parse_job_id(job_id.upper()) == job_id
    with pytest.raises(InvalidArgument) as caught:
        parse_job_id("42")
    assert caught.value.field == "job_id"


def test_the_prompt_token_estimate_rounds_up() -> None:
    assert [estimate_prompt_tokens(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_tool_arguments_are_checked_in_linear_time_whatever_the_pattern() -> None:
    """(a+)+$ backtracks exponentially in Python's re on 'aaaa...!'; RE2 answers at once."""
    from hearth.chat import ToolCall, argument_errors

    evil = Tool(
        "t", parameters={"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}
    )
    assert validate_submission(JobDraft(prompt="hi", tools=(evil,)), LIMITS).spec.tools == (evil,)
    call = ToolCall("c1", "t", '{"x": "' + "a" * 5000 + '!"}')
    parse, schema = argument_errors(call, evil)
    assert parse == "" and "does not match" in schema
    assert argument_errors(ToolCall("c2", "t", '{"x": "aaa"}'), evil) == ("", "")
    keyed = Tool("k", parameters={"type": "object", "patternProperties": {"^n_": {"type": "integer"}}})
    assert "is not of type 'integer'" in argument_errors(ToolCall("c3", "k", '{"n_a": "x"}'), keyed)[1]
