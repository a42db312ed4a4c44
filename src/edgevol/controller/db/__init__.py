"""The controller's database: ORM models, engines/sessions and alembic migrations."""

from __future__ import annotations
