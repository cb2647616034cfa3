"""pool-managerd: the live view of workers (from their NATS heartbeats),
placement of jobs on them, and model loads, unloads and drains on workers.

Read top-down: ``__main__`` (composition root), ``config``, ``api`` (the gRPC
servicer), ``domain`` (the pure pool view), ``adapters`` (NATS, and gRPC
commands to workers).
"""
