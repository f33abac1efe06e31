"""Alembic migrations of Collectflow's schema (`init_db` runs them; see docs/migrations.md)."""
