"""The tool-call conformance checks over what a target answered."""

from __future__ import annotations

import pytest

from hearth.chat import ToolCall, ToolCallDelta
from hearth.probe import CHECK_NAMES, Answer, grade

pytestmark = pytest.mark.unit


def streamed(arguments: str, pieces: int = 3) -> list[ToolCallDelta]:
    size = max(1, len(arguments) // pieces)
    parts = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    return [ToolCallDelta(0, "call_1", "get_weather", parts[0])] + [
        ToolCallDelta(0, arguments=p) for p in parts[1:]
    ]


def verdicts(answer: Answer) -> dict[str, bool]:
    results = grade(answer)
    assert [r.name for r in results] == list(CHECK_NAMES)
    return {r.name: r.passed for r in results}


def test_a_conformant_answer_passes_every_check() -> None:
    arguments = '{"city": "Paris", "unit": "celsius"}'
    answer = Answer("TOOL_CALLS", [ToolCall("call_1", "get_weather", arguments)], streamed(arguments))

    assert all(verdicts(answer).values())


@pytest.mark.parametrize(
    ("arguments", "failing"),
    [
        ("{city: Paris}", {"ARGUMENTS_PARSE", "ARGUMENTS_MATCH_SCHEMA"}),
        ('["Paris"]', {"ARGUMENTS_PARSE", "ARGUMENTS_MATCH_SCHEMA"}),
        ('{"unit": "celsius"}', {"ARGUMENTS_MATCH_SCHEMA"}),
        ('{"city": "Paris", "unit": "kelvin"}', {"ARGUMENTS_MATCH_SCHEMA"}),
        ('{"city": "Paris", "country": "FR"}', {"ARGUMENTS_MATCH_SCHEMA"}),
    ],
)
def test_bad_arguments_fail_the_checks_they_break(arguments: str, failing: set[str]) -> None:
    answer = Answer("TOOL_CALLS", [ToolCall("c", "get_weather", arguments)], streamed(arguments))

    assert {name for name, passed in verdicts(answer).items() if not passed} == failing


def test_pieces_that_do_not_join_into_the_final_call_fail_the_stream_check() -> None:
    arguments = '{"city": "Paris"}'
    answer = Answer("TOOL_CALLS", [ToolCall("c", "get_weather", arguments)], streamed('{"city": "Lyon"}'))

    assert verdicts(answer) == dict.fromkeys(CHECK_NAMES, True) | {"STREAM_ASSEMBLES": False}


def test_text_instead_of_a_call_fails_everything_and_says_what_came() -> None:
    results = grade(Answer("STOP", text="It is sunny in Paris."))

    assert not any(r.passed for r in results)
    assert "finish reason STOP" in results[0].detail and "sunny" in results[0].detail


def test_a_refused_generation_fails_every_check_with_the_reason() -> None:
    results = grade(Answer(error="TOOLS_NOT_SUPPORTED: model 'tiny' does not make tool calls here"))

    assert [r.passed for r in results] == [False] * 4
    assert all("TOOLS_NOT_SUPPORTED" in r.detail for r in results)
