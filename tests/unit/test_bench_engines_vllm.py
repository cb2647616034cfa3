"""`hearth bench engines --engine vllm`: the report's arithmetic and what the CLI prints.
(The measurement itself runs on a real vLLM in tests/integration/test_vllm_e2e.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearth.bench import engines_vllm
from hearth.bench.engines_vllm import VllmBenchConfig, VllmBenchReport, WayResult, _report
from hearth.cli import app

pytestmark = pytest.mark.unit


def way(tokens: int, seconds: float, ttft: list[float], orchestratord_cpu: float = 0.0) -> WayResult:
    return WayResult(
        tokens=tokens,
        seconds=seconds,
        ttft=ttft,
        cpu_seconds={"orchestratord": orchestratord_cpu, "vllm": tokens / 1000},
    )


def test_a_cell_reports_ratios_added_ttft_and_cpu_per_1k_tokens() -> None:
    cell = _report(
        16,
        64,
        {
            "direct": way(1024, 2.0, [0.010, 0.020, 0.030]),
            "sdk": way(1024, 4.0, [0.015, 0.030, 0.060], orchestratord_cpu=0.512),
            "openai_http": way(1000, 2.5, [0.020, 0.040, 0.050], orchestratord_cpu=1.0),
        },
    )

    assert cell.ways["direct"].tokens_per_second == 512.0
    assert cell.ratio == {"sdk": 0.5, "openai_http": 400.0 / 512.0}
    assert cell.added_ttft_p50_ms["sdk"] == pytest.approx(10.0)
    assert cell.added_ttft_p99_ms["sdk"] == pytest.approx(59.4 - 29.8)
    assert cell.added_ttft_p50_ms["openai_http"] == pytest.approx(20.0)
    assert cell.ways["sdk"].cpu_seconds_per_1k_tokens == {"orchestratord": 0.5, "vllm": 1.0}
    assert cell.ways["openai_http"].cpu_seconds_per_1k_tokens["orchestratord"] == 1.0


def test_a_way_without_tokens_reports_nan_not_a_division_error() -> None:
    cell = _report(
        1, 8, {"direct": way(8, 1.0, [0.01]), "sdk": WayResult(), "openai_http": way(8, 1.0, [0.01])}
    )

    assert math.isnan(cell.ways["sdk"].tokens_per_second) and math.isnan(cell.ratio["sdk"])


def fake_report(config: VllmBenchConfig) -> VllmBenchReport:
    cells = [
        _report(
            streams,
            tokens,
            {
                name: way(streams * tokens, 1.0 + index, [0.01 * (index + 1)], orchestratord_cpu=0.1)
                for index, name in enumerate(("direct", "sdk", "openai_http"))
            },
        )
        for streams in config.streams
        for tokens in config.tokens
    ]
    return VllmBenchReport(
        config={"streams": list(config.streams)},
        vllm_command=["/r/.venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"],
        cpus=2,
        cells=cells,
    )


def test_the_cli_prints_every_cell_and_way(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[VllmBenchConfig] = []

    def run(config: VllmBenchConfig, data_dir: Path | None, progress: Any = None) -> VllmBenchReport:
        seen.append(config)
        return fake_report(config)

    monkeypatch.setattr(engines_vllm, "run_vllm_engines_bench", run)
    args = ["bench", "engines", "--engine", "vllm", "--vllm-streams", "1,16", "--vllm-tokens", "64"]

    result = CliRunner().invoke(app, [*args, "--rounds", "2", "--vllm-arg", "--enforce-eager"])
    as_json = CliRunner().invoke(app, [*args, "--json"])

    assert result.exit_code == 0, result.output
    assert (seen[0].streams, seen[0].tokens, seen[0].rounds) == ((1, 16), (64,), 2)
    assert seen[0].vllm_args == ("--enforce-eager",)
    for title in ("Tokens per second", "Time to first token", "CPU seconds per 1,000 tokens"):
        assert title in result.output
    assert "vllm.entrypoints.openai.api_server" in result.output
    assert result.output.count(" http ") >= 2  # a CPU row for the front door in each cell
    report = json.loads(as_json.stdout[as_json.stdout.index("{") :])
    assert [c["streams"] for c in report["cells"]] == [1, 16]
    assert set(report["cells"][0]["ways"]) == {"direct", "sdk", "openai_http"}


def test_an_unknown_engine_is_refused() -> None:
    result = CliRunner().invoke(app, ["bench", "engines", "--engine", "tgi"])

    assert result.exit_code != 0
    assert "transformers or vllm" in result.output
