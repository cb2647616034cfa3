"""Hearth: local-first LLM orchestration. The client SDK lives here."""

__version__ = "0.1.0"
