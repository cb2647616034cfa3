"""workerd's adapters: engines, NATS heartbeats and cancellations, NVML, metrics."""
