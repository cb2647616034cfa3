"""memoryd: Hearth's long-term memory service.

Memories are embedded (a local sentence-transformers model or a
text-embeddings-inference server) and kept in Qdrant, one collection per
embedding model, scoped by project, task and subtask. Run it with
``python -m memoryd``; the layout reads top-down: ``__main__`` (composition
root), ``config``, ``api`` (gRPC servicer), ``domain`` (pure rules and the
interfaces of the embedder and the store), ``adapters`` (Qdrant, embedders).
"""
