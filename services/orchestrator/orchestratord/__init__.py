"""orchestratord: Hearth's public job API, the system of record (Postgres)
and the dispatcher that runs each job on a worker.

Layout: ``__main__`` (composition root), ``config`` (Settings), ``api``
(the gRPC servicer and proto conversion), ``domain`` (jobs, queue, journal,
dispatcher; no gRPC, NATS or SQL), ``adapters`` (Postgres, gRPC clients,
NATS, metrics).
"""
