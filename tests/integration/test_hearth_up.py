"""`hearth up` as a person runs it: a process that starts everything, says when
it is healthy, serves the CLI, and stops cleanly on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

HEARTH = str(Path(sys.executable).parent / "hearth")


def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log_path = tmp_path / "up.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with log_path.open("w") as log:
        up = subprocess.Popen([HEARTH, "--data-dir", str(data_dir), "up"], stdout=log, stderr=log, env=env)
    try:
        stack_file = data_dir / "stack.json"
        deadline = time.monotonic() + 240
        while not stack_file.exists():
            assert up.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "hearth up did not become healthy"
            time.sleep(0.2)
        children = psutil.Process(up.pid).children(recursive=True)
        # The five services and nats-server; pg_ctl daemonizes PostgreSQL.
        assert len(children) >= 6
        assert (data_dir / "postgres" / "postmaster.pid").exists()

        text = log_path.read_text()
        assert "all services healthy" in text
        assert "Its text is noise" in text  # no model configured: it says so
        for service in ("orchestratord", "routerd", "pool-managerd", "workerd", "memoryd"):
            assert f"{service} |" in text, f"no prefixed log lines from {service}"

        cli = [HEARTH, "--data-dir", str(data_dir)]
        status = subprocess.run([*cli, "status", "--json"], capture_output=True, text=True, env=env)
        assert status.returncode == 0, status.stderr
        assert {s["status"] for s in json.loads(status.stdout).values()} == {"SERVING"}
        run = subprocess.run(
            [*cli, "run", "hello", "--max-tokens", "5", "--json"], capture_output=True, text=True, env=env
        )
        assert run.returncode == 0, run.stderr
        job = json.loads(run.stdout)
        assert job["state"] == "JOB_STATE_COMPLETED"
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(120)
    assert code == 0, log_path.read_text()[-4000:]
    assert not (data_dir / "stack.json").exists()
    assert not (data_dir / "postgres" / "postmaster.pid").exists()  # PostgreSQL stopped too
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
