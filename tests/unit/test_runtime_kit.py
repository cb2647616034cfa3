"""Settings, redaction, log lines and the generated-code staleness check."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import model_validator

from hearth.runtime.logs import JsonFormatter
from hearth.runtime.redaction import REDACTED, redact
from hearth.runtime.settings import ServiceSettings, load_settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


class _Settings(ServiceSettings):
    service: ClassVar[str] = "example"
    max_queued: int = 10


def test_settings_layering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hearth.yaml"
    config.write_text(
        "nats_url: nats://shared:1\nexample:\n  max_queued: 7\n  log_level: debug\n"
        "models:\n  - name: m1\n    path: /m\n    context_length: 512\n"
    )
    settings = load_settings(_Settings, ["--config", str(config)])
    assert (settings.nats_url, settings.max_queued, settings.log_level) == ("nats://shared:1", 7, "debug")
    assert [m.name for m in settings.models] == ["m1"]

    monkeypatch.setenv("HEARTH_EXAMPLE_MAX_QUEUED", "5")
    assert load_settings(_Settings, ["--config", str(config)]).max_queued == 5
    assert load_settings(_Settings, ["--config", str(config), "--max-queued", "3"]).max_queued == 3


def test_invalid_settings_exit_with_the_field_flag_and_env(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(_Settings, ["--max-queued", "many", "--log-level", "loud"])
    text = str(caught.value)
    assert "max_queued" in text and "--max-queued" in text and "HEARTH_EXAMPLE_MAX_QUEUED" in text
    assert "log_level" in text


def test_unreadable_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(SystemExit, match="not valid YAML"):
        load_settings(_Settings, ["--config", str(bad)])


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "hf_abcdefghijklmnopqrstuvwxyz01",
        "AKIAABCDEFGHIJKLMNOP",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_redaction_removes_known_secret_shapes(secret: str) -> None:
    out = redact(f"calling upstream with {secret} now")
    assert secret not in out and REDACTED in out


def test_redaction_of_passwords_in_urls_keys_and_pem() -> None:
    assert "hunter22" not in redact("postgresql://app:hunter22@db:5432/x")
    assert "app" in redact("postgresql://app:hunter22@db:5432/x")
    assert "s3cr3tvalue" not in redact("api_key=s3cr3tvalue and more")
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    assert "MIIEow" not in redact(f"key: {pem}")
    assert redact("a plain sentence about tokens") == "a plain sentence about tokens"


def test_json_log_line_has_trace_id_and_is_redacted() -> None:
    tracer = TracerProvider().get_tracer("t")
    formatter = JsonFormatter("testd")
    with tracer.start_as_current_span("op") as span:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", ("ghp_" + "a" * 36,), None)
        entry = json.loads(formatter.format(record))
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["service"] == "testd" and entry["level"] == "info"
    assert "ghp_" not in entry["message"]


def test_generated_code_is_fresh() -> None:
    """Fails when proto/ changed and `make proto` was not run."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


class _Checked(ServiceSettings):
    service: ClassVar[str] = "checked"
    low: int = 1
    high: int = 2

    @model_validator(mode="after")
    def _ordered(self) -> _Checked:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def test_model_level_check_is_reported_without_a_field() -> None:
    with pytest.raises(SystemExit, match="low must not exceed high"):
        load_settings(_Checked, ["--low", "5"])


def test_configuration_reference_is_fresh() -> None:
    """docs/configuration.md's settings tables are generated from the settings classes."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
