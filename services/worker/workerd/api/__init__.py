"""workerd's gRPC surface: the WorkerService servicer and proto conversion."""
