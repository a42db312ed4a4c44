"""Alembic environment: runs on the connection ``migrate()`` hands over, or opens its own.

Why both: the controller migrates programmatically inside its own locked
transaction; the alembic command line (pointed at this directory with
``sqlalchemy.url`` set) still works for developers writing new revisions.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from edgevol.controller.db.models import Base
from edgevol.controller.db.session import WRITE_OPTION, make_engine

config = context.config


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
