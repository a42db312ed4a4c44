"""Alembic revisions, applied in order by ``edgevol.controller.db.session.migrate``."""
