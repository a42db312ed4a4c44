"""EVE API v2, the controller side: every request verified before it is parsed.

Status codes follow API.md: 401 unsigned or unknown sender, 403 bad
signature or a device speaking for another, 404 unknown device, 304 config
unchanged, 409 already registered. Nothing is stored for a refused request.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from edgevol.api import messages as m
from edgevol.controller.configbuild import build_config, config_hash
from edgevol.controller.context import ControllerContext
from edgevol.controller.records import Device
from edgevol.controller.store import Conflict, Invalid, NotFound
from edgevol.trust.envelope import AuthError, controller_certs, open_message, seal_message
from edgevol.trust.pki import cert_hash

PROTO = "application/x-proto-binary"
SHA256_32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES


def _proto(body: bytes, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type=PROTO)


def _refuse(status: int, reason: str) -> Response:
    return Response(content=reason + "\n", status_code=status, media_type="text/plain")


class DeviceAPI:
    def __init__(self, ctx: ControllerContext) -> None:
        self.ctx = ctx

    def _lookup(self, h: bytes) -> bytes | None:
        dev = self.ctx.store.device_by_cert_hash(bytes(h))
        return dev.device_cert_pem if dev else None

    def _authenticate(self, body: bytes, msg_type: Any, path_uuid: str | None) -> tuple[Any, Device]:
        """Verify the signature, then check the signer is the device the URL names."""
        msg, cert = open_message(body, msg_type, self._lookup)
        dev = self.ctx.store.device_by_cert_hash(cert_hash(cert, SHA256_32))
        if dev is None:
            raise AuthError(401, "unknown device certificate")
        if path_uuid is not None and path_uuid != dev.uuid:
            try:
                self.ctx.store.get_device(path_uuid)
            except NotFound:
                raise AuthError(404, f"no device {path_uuid}") from None
            raise AuthError(403, "signed by another device than the one in the URL")
        self.ctx.store.touch(dev.uuid)
        return msg, dev

    def certs(self) -> Response:
        payload = controller_certs(self.ctx.signing)
        return _proto(seal_message(payload, self.ctx.signing))

    def register(self, body: bytes) -> Response:
        try:
            msg, onboard_pem = open_message(body, m.ZRegisterMsg, lambda h: self.ctx.store.onboarding_cert(bytes(h)),
                                            allow_embedded_cert=True)
        except AuthError as exc:
            # an onboarding certificate nobody registered is "forbidden", not "who are you"
            return _refuse(403 if exc.status == 401 else exc.status, exc.reason)
        if self.ctx.store.onboarding_cert(cert_hash(onboard_pem, SHA256_32)) is None:
            return _refuse(403, "unknown onboarding certificate")
        try:
            self.ctx.store.register(cert_hash(onboard_pem, SHA256_32), msg.serial, bytes(msg.pemCert))
        except NotFound as exc:
            return _refuse(403, str(exc))
        except Conflict as exc:
            return _refuse(409, str(exc))
        except Invalid as exc:
            return _refuse(400, str(exc))
        return Response(status_code=201)

    def config(self, body: bytes, path_uuid: str | None) -> Response:
        req, dev = self._authenticate(body, m.ConfigRequest, path_uuid)
        cfg = build_config(self.ctx.store, dev.uuid)
        digest = config_hash(cfg)
        if req.configHash == digest:
            return Response(status_code=304)
        return _proto(seal_message(m.ConfigResponse(config=cfg, configHash=digest), self.ctx.signing))

    def info(self, body: bytes, path_uuid: str) -> Response:
        return self._record(body, path_uuid, m.ZInfoMsg, "devId", self.ctx.store.record_info, "info")

    def metrics(self, body: bytes, path_uuid: str) -> Response:
        return self._record(body, path_uuid, m.ZMetricMsg, "devID", self.ctx.store.record_metrics, "metrics")

    def _record(self, body: bytes, path_uuid: str, msg_type: Any, dev_field: str,
                store: Callable[[str, Any], Any], what: str) -> Response:
        """Verify, refuse a message that names another device, then store it."""
        msg, dev = self._authenticate(body, msg_type, path_uuid)
        named = getattr(msg, dev_field)
        if named and named != dev.uuid:
            return _refuse(403, f"{what} names another device")
        try:
            store(dev.uuid, msg)
        except Invalid as exc:
            return _refuse(400, str(exc))
        return Response(status_code=200)


async def _call(fn: Callable[..., Response], *args: Any) -> Response:
    try:
        return await run_in_threadpool(fn, *args)
    except AuthError as exc:
        return _refuse(exc.status, exc.reason)


def router(ctx: ControllerContext) -> APIRouter:
    api = DeviceAPI(ctx)
    r = APIRouter(prefix="/api/v2/edgedevice", tags=["device API v2"])

    @r.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    @r.get("/certs")
    async def certs() -> Response:
        return await _call(api.certs)

    @r.post("/register")
    async def register(request: Request) -> Response:
        return await _call(api.register, await request.body())

    @r.post("/config")
    async def config_any(request: Request) -> Response:
        return await _call(api.config, await request.body(), None)

    @r.post("/id/{uuid}/config")
    async def config(uuid: str, request: Request) -> Response:
        return await _call(api.config, await request.body(), uuid)

    @r.post("/id/{uuid}/info")
    async def info(uuid: str, request: Request) -> Response:
        return await _call(api.info, await request.body(), uuid)

    @r.post("/id/{uuid}/metrics")
    async def metrics(uuid: str, request: Request) -> Response:
        return await _call(api.metrics, await request.body(), uuid)

    return r
