"""`make demo`: start the embedded stack, store a memory, run a job with
memory context, show the streamed answer and its trace, stop cleanly.

Every step is a `hearth` CLI command, as a person would type it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEARTH = str(Path(sys.executable).parent / "hearth")
DATA_DIR = ROOT / ".hearth" / "demo"


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def hearth(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print(f"$ hearth {shlex.join(args)}", flush=True)
    result = subprocess.run([HEARTH, "--data-dir", str(DATA_DIR), *args], text=True, stdout=subprocess.PIPE)
    if not quiet:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `hearth {args[0]}` failed with exit code {result.returncode}")
    return result


def wait_for_stack(up: subprocess.Popen[bytes], log_path: Path, timeout: float = 300) -> None:
    stack_file = DATA_DIR / "stack.json"
    deadline = time.monotonic() + timeout
    while not stack_file.exists():
        if up.poll() is not None:
            sys.stdout.write(log_path.read_text()[-5000:])
            raise SystemExit(f"demo: hearth up exited with code {up.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("demo: the stack did not become healthy in time")
        time.sleep(0.2)


def main() -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    os.environ.update(env)
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    DATA_DIR.mkdir(parents=True)
    log_path = DATA_DIR / "up.log"

    step("Starting the stack: NATS, PostgreSQL and five services, each its own process")
    print(f"$ hearth up --data-dir {DATA_DIR}   (service logs: {log_path})", flush=True)
    with log_path.open("w") as log:
        up = subprocess.Popen(
            [HEARTH, "up", "--data-dir", str(DATA_DIR)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for_stack(up, log_path)
        for line in log_path.read_text().splitlines():
            if (
                line.startswith("hearth:")
                or "tiny randomly initialised" in line
                or "Its text is noise" in line
            ):
                print(line)
        hearth("status")

        step("Storing a memory for project 'demo'")
        hearth("memory", "add", "The hearth demo project keeps its notes in memoryd.", "--project", "demo")

        step("Running a job with memory context (tokens stream as they are made)")
        prompt = [
            "run",
            "What does the demo project keep in memoryd?",
            "--context",
            "--project",
            "demo",
            "--max-tokens",
            "32",
        ]
        print(f"$ hearth {shlex.join(prompt)}", flush=True)
        if subprocess.run([HEARTH, "--data-dir", str(DATA_DIR), *prompt]).returncode != 0:
            raise SystemExit("demo: `hearth run` failed")
        listed = json.loads(hearth("jobs", "list", "--limit", "1", "--json", quiet=True).stdout)
        job_id = listed[0].get("jobId") or listed[0].get("job_id")

        step(f"The job's trace across the services (job {job_id})")
        time.sleep(1.0)  # span files are flushed every 200 ms
        hearth("trace", job_id)
        hearth("workers")
    finally:
        step("Stopping the stack")
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            code = up.wait()
    if code != 0:
        print(log_path.read_text()[-3000:])
        raise SystemExit(f"demo: hearth up exited with code {code}")
    print("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
