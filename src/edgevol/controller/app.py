"""The controller's ASGI application: device API v2 and the admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from edgevol.controller import admin_api, device_api, web
from edgevol.controller.context import ControllerContext
from edgevol.controller.retention import Pruner

# Request handlers run on this many threads: they hold the GIL for most of their work, so more threads
# add switching, not throughput; each may hold one database connection (see db.session.POOL_SIZE).
REQUEST_THREADS = 16


def create_app(ctx: ControllerContext) -> FastAPI:
    api = device_api.DeviceAPI(ctx)
    pruner = Pruner(ctx.store, ctx.prune_interval_s)

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

    app = FastAPI(title="edgevol controller", version="0.1.0", lifespan=lifespan,
                  description="EVE API v2 for devices; admin API for operators (Bearer token).")
    app.include_router(device_api.router(api))
    app.include_router(admin_api.router(ctx))
    app.include_router(web.router())
    admin_api.install_error_handlers(app)
    return app
