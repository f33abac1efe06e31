"""Alembic migrations of Collectflow's schema.

`init_db` runs them; "Schema migrations" in docs/design.md says how to write one.
"""
