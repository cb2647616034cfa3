"""The sim engine's scripted replies (``sim_scripts``), the test double that
gives end-to-end tests a fixed answer or a failure after tokens."""

from __future__ import annotations

import pytest

from hearth.errors import HearthError
from workerd.adapters.engines.sim_engine import SimEngine
from workerd.config import Settings
from workerd.domain.engine import GenerationFinished, GenerationRequest, TokenDelta

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def generate(engine: SimEngine, job_id: str, max_tokens: int = 100) -> tuple[str, str, int]:
    """(text, finish reason, output tokens) of one generation."""
    text, finish, tokens = "", "", 0
    async for event in engine.generate(GenerationRequest(job_id, "m", "a prompt", max_tokens)):
        if isinstance(event, TokenDelta):
            text += event.text
        elif isinstance(event, GenerationFinished):
            finish, tokens = event.finish_reason, event.output_tokens
    return text, finish, tokens


async def test_the_script_is_streamed_as_written_in_turn_the_last_repeating() -> None:
    reply = '{"tasks": [\n  {"key": "a"}\n]}  \n'
    engine = SimEngine("m", decode_seconds_per_step=0.0, script=[("first answer", ""), (reply, "")])
    await engine.start()
    try:
        assert await generate(engine, "j1") == ("first answer", "stop", 2)
        assert await generate(engine, "j2") == (reply, "stop", 5)
        assert (await generate(engine, "j3"))[0] == reply
        # max_tokens still cuts a reply.
        assert await generate(engine, "j4", max_tokens=2) == ('{"tasks": [', "length", 2)
    finally:
        await engine.cleanup()


async def test_a_scripted_failure_comes_after_the_reply() -> None:
    engine = SimEngine("m", decode_seconds_per_step=0.0, script=[("partial code", "ENGINE_ERROR"), ("", "")])
    await engine.start()
    try:
        seen = ""
        with pytest.raises(HearthError) as failed:
            async for event in engine.generate(GenerationRequest("j1", "m", "p", 10)):
                if isinstance(event, TokenDelta):
                    seen += event.text
        assert failed.value.reason == "ENGINE_ERROR" and seen == "partial code"
        assert await generate(engine, "j2") == ("", "stop", 0)  # an empty reply finishes at once
    finally:
        await engine.cleanup()


def test_the_worker_reads_scripts_per_model() -> None:
    settings = Settings(
        engine="sim",
        model="a",
        sim_scripts={"a": [{"reply": "x", "fail": "ENGINE_ERROR"}, {"reply": "y"}]},
    )
    assert [(s.reply, s.fail) for s in settings.sim_scripts["a"]] == [("x", "ENGINE_ERROR"), ("y", "")]
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        Settings(engine="sim", model="a", sim_scripts={"a": [{"answer": "x"}]})
