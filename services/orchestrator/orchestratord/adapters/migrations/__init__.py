"""Alembic migrations of the orchestrator's schema, run programmatically by
:func:`orchestratord.adapters.migrate.upgrade_database`."""
