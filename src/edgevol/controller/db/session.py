"""Engines, sessions and schema migration for SQLite and PostgreSQL.

Why the SQLite set-up: Python's sqlite3 module opens transactions lazily and
never around DDL, which breaks both atomic migrations and read-then-write
transactions. We take over: every transaction starts with an explicit BEGIN,
and writers (connections with the ``edgevol_write`` execution option) start
with BEGIN IMMEDIATE, so they queue on the busy timeout instead of failing
when two of them try to upgrade a read lock at once. WAL lets readers run
alongside the single writer; foreign keys are off in SQLite unless asked for.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
WRITE_OPTION = "edgevol_write"
# A connection that runs one SELECT and nothing else: on SQLite no BEGIN is sent, since a lone
# statement is its own transaction (one statement per device request instead of two).
SINGLE_READ_OPTION = "edgevol_single_read"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Connections kept per process: the request threads (see edgevol.controller.app.REQUEST_THREADS), the
# report writer and retention; beyond that, short-lived extra ones.
POOL_SIZE = 20
POOL_OVERFLOW = 20
# Any constant works; it only has to be the same for every controller process.
_PG_MIGRATION_LOCK = 0x65766F6C  # "evol"


def normalize_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and use psycopg 3 for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {parsed.drivername!r}: use sqlite:/// or postgresql://")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine configured for the controller's needs on SQLite or PostgreSQL."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        # No ping on checkout: it would double the round trips of a device request that needs one
        # statement. A connection the server dropped (a restart) fails on use instead; SQLAlchemy then
        # discards the whole pool, and the caller answers 503 or retries (ControllerStore.sender).
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", POOL_OVERFLOW)
        return create_engine(url, pool_pre_ping=False, **kwargs)

    memory = parsed.database in (None, "", ":memory:")
    if memory:  # one shared connection, or every connection would see its own empty database
        kwargs.setdefault("poolclass", StaticPool)
    if not memory:  # connections are cheap to keep, costly to reopen (PRAGMAs, WAL check) under load
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", POOL_OVERFLOW)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                              "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not memory:
            _enable_wal(cur)
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(SINGLE_READ_OPTION, False):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE_OPTION, False) else "BEGIN")

    return engine


def _enable_wal(cur: Any) -> None:
    """Switch a database file to WAL once (it stays so); wait while others hold it.

    Why a loop: switching needs an exclusive lock and SQLite does not apply the
    busy timeout to it, so several processes opening a new database at once
    would otherwise fail with "database is locked".
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            if str(cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: could not switch it to WAL mode")
        time.sleep(0.02)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the store turns them into records)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """A programmatic alembic config: no alembic.ini, scripts shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def migrate(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction; safe to run again and concurrently.

    Concurrent controllers starting together serialise on an advisory lock
    (PostgreSQL) or the write lock (SQLite), and the second finds nothing to do.
    """
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (``None`` when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
