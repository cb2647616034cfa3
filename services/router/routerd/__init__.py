"""routerd: decides which model (target) runs a job and writes the routing
report that explains why.

Read top-down: ``__main__`` (composition root), ``config``, ``api`` (the gRPC
servicer), ``domain`` (the pure routing decision).
"""
