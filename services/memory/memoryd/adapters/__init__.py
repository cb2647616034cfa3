"""memoryd's adapters: embedders (local sentence-transformers, TEI) and the
Qdrant memory store. Import the modules directly; nothing heavy loads here."""
