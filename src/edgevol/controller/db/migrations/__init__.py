"""Alembic migration environment (a package so it ships with edgevol; alembic skips this file)."""
