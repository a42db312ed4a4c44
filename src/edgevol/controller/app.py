"""The controller's ASGI application: device API v2 and the admin API."""

from __future__ import annotations

from fastapi import FastAPI

from edgevol.controller import admin_api, device_api, web
from edgevol.controller.context import ControllerContext


def create_app(ctx: ControllerContext) -> FastAPI:
    app = FastAPI(title="edgevol controller", version="0.1.0",
                  description="EVE API v2 for devices; admin API for operators (Bearer token).")
    app.include_router(device_api.router(ctx))
    app.include_router(admin_api.router(ctx))
    app.include_router(web.router())
    admin_api.install_error_handlers(app)
    return app
