"""Submission validation: each bad input names its field; defaults apply.
Also the token estimate and the memory context builder."""

from __future__ import annotations

import uuid

import pytest

from hearth.api.orchestrator.v1 import orchestrator_pb2 as pb
from hearth.errors import InvalidArgument
from orchestratord.api.convert import draft_from_request
from orchestratord.domain.context import RecalledMemory, build_prompt_with_context
from orchestratord.domain.jobs import Priority
from orchestratord.domain.validation import (
    JobDraft,
    SubmitLimits,
    estimate_prompt_tokens,
    parse_job_id,
    validate_submission,
)

pytestmark = pytest.mark.unit

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


def test_job_ids_must_be_uuids() -> None:
    job_id = str(uuid.uuid4())
    assert parse_job_id(job_id.upper()) == job_id
    with pytest.raises(InvalidArgument) as caught:
        parse_job_id("42")
    assert caught.value.field == "job_id"


def test_the_prompt_token_estimate_rounds_up() -> None:
    assert [estimate_prompt_tokens(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_memory_context_goes_first_in_the_order_returned_and_within_its_budget() -> None:
    memories = [RecalledMemory("m1", "alpha"), RecalledMemory("m2", "  "), RecalledMemory("m3", "beta gamma")]
    built = build_prompt_with_context("question?", memories, max_chars=1000)
    assert built.memory_ids == ("m1", "m3")
    assert built.text.index("alpha") < built.text.index("beta gamma") < built.text.index("question?")
    assert built.text.endswith("question?")
    assert build_prompt_with_context("question?", memories, 1000) == built  # stable
    cut = build_prompt_with_context("q", memories, max_chars=9)
    assert cut.memory_ids == ("m1", "m3") and "alpha\n\nbe" in cut.text and "beta gamma" not in cut.text
    assert build_prompt_with_context("q", [], 1000).text == "q"
    assert build_prompt_with_context("q", memories, 0).memory_ids == ()
