"""memoryd's gRPC surface: the MemoryService servicer and proto<->domain conversion."""
