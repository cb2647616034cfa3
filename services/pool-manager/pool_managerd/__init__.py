"""pool-managerd: the live view of workers (from their NATS heartbeats) and
placement of jobs on them.

Read top-down: ``__main__`` (composition root), ``config``, ``api`` (the gRPC
servicer), ``domain`` (the pure pool view), ``adapters`` (NATS).
"""
