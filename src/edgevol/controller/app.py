"""The controller's ASGI application: device API v2 and the admin API."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from edgevol.controller import admin_api, device_api, web
from edgevol.controller.context import ControllerContext, Retention, load_context
from edgevol.controller.retention import Pruner

# Admin requests and the device API's rare ones (register, attest) run on this many threads; they hold the
# GIL for most of their work, so more threads add switching, not throughput; each may hold one database
# connection (see db.session.POOL_SIZE). Config polls and reports run on the event loop (device_api._now).
REQUEST_THREADS = 16
# Where a worker process of `controller run --workers N` finds its context (set by its parent, see server.py).
ENV_DATA_DIR = "EDGEVOL_CONTROLLER_DIR"
ENV_DB = "EDGEVOL_DB"
ENV_ENCRYPT = "EDGEVOL_CONTROLLER_ENCRYPT_CREDENTIALS"
ENV_LOG_FORMAT = "EDGEVOL_CONTROLLER_LOG_FORMAT"
ENV_PARENT_PID = "EDGEVOL_CONTROLLER_PARENT_PID"


class ControllerApp(FastAPI):
    """FastAPI for operators (admin API, console); device API requests go straight to their own router."""

    device_api: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.device_api is not None and scope["type"] == "http" and scope["path"].startswith(device_api.PREFIX):
            await self.device_api(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(ctx: ControllerContext) -> FastAPI:
    api = device_api.DeviceAPI(ctx)
    pruner = Pruner(ctx.store, ctx.retention.prune_interval_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Background work lives as long as the server: the report writer stores what is queued before exit.
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        api.start()
        pruner.start()
        try:
            yield
        finally:
            pruner.stop()
            api.stop()

    app = ControllerApp(title="edgevol controller", version="0.1.0", lifespan=lifespan,
                        description="Admin API for operators (Bearer token). Devices use EVE API v2 under "
                        f"{device_api.PREFIX}.")
    app.device_api = device_api.asgi(api)
    app.include_router(admin_api.router(ctx))
    app.include_router(web.router())
    admin_api.install_error_handlers(app)
    return app


def app_from_env() -> FastAPI:
    """The app of one worker process (``uvicorn --factory edgevol.controller.app:app_from_env``).

    Why from the environment: uvicorn starts each worker as a fresh
    interpreter from an import string, so the parent's context cannot be
    handed over; the parent names it in ``ENV_*`` after making keys, admin
    token and schema once. This only loads them and calls :func:`create_app`.
    """
    from edgevol import log as logsetup

    logsetup.configure(os.environ.get(ENV_LOG_FORMAT, "auto"), "info")
    log = logsetup.get_logger("edgevol.controller")
    try:
        ctx = load_context(Path(os.environ[ENV_DATA_DIR]), os.environ[ENV_DB],
                           os.environ.get(ENV_ENCRYPT, "auto"), prepare=False, retention=Retention.from_env())
    except Exception as exc:  # noqa: BLE001 - any of them fails the same way on every restart
        from uvicorn.main import STARTUP_FAILURE

        log.error("controller worker cannot start", pid=os.getpid(), error=f"{type(exc).__name__}: {exc}")
        sys.exit(STARTUP_FAILURE)  # uvicorn's parent stops instead of restarting the worker forever
    _end_with_parent()
    log.info("controller worker serving", pid=os.getpid(), parent=os.getppid())
    return create_app(ctx)


def _end_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies, even of SIGKILL (which lets it stop no worker).

    Without it, workers of a killed parent keep accepting on the shared socket
    with nobody to supervise or stop them. SIGTERM is a clean stop: queued
    reports are stored first.
    """
    parent = os.environ.get(ENV_PARENT_PID)
    if not sys.platform.startswith("linux") or parent in (None, str(os.getpid())):
        return  # not a worker process (the factory called in-process)
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request took effect
