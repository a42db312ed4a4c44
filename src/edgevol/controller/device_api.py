"""EVE API v2, the controller side: every request verified before it is parsed.

The endpoints, status codes and bodies are the ones EVE's devices and LF Edge
Adam use (adam pkg/server/server.go routes, apiHandlerv2.go, commonHandler.go,
attestation.go): register 201, uuid 200, attest 201, config 200/304 (403 for
a missing or wrong integrity token), info and metrics 201, and the log,
flow-log and hardware-health posts every EVE device sends accepted with 201.
Refusals: 401 unsigned or unknown sender, 403 bad signature or a device
speaking for another, 404 unknown device, 409 already registered. Nothing is
stored for a refused request.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from edgevol.api import messages as m
from edgevol.controller.configbuild import CredentialEncryption, config_from_snapshot, config_hash
from edgevol.controller.configcache import ConfigCache, ConfigKey
from edgevol.controller.context import ControllerContext
from edgevol.controller.db import infomsg
from edgevol.controller.db.infomsg import Report
from edgevol.controller.ingest import Overloaded, ReportWriter
from edgevol.controller.records import Device, Sender
from edgevol.controller.store import Conflict, Invalid, NotFound
from edgevol.log import get_logger
from edgevol.trust.envelope import (
    AuthError,
    controller_certs,
    open_container,
    open_message,
    pem_from_base64,
    seal_message,
)
from edgevol.netaddr import is_loopback_host
from edgevol.trust.pki import TrustError, der_hash, load_cert

log = get_logger("edgevol.controller.device_api")

PREFIX = "/api/v2/edgedevice"
PROTO = "application/x-proto-binary"
SHA256_32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
NONCE_BYTES = 16  # within the 12..32 bytes EVE's TPM quote can carry as qualifying data
TOKEN_BYTES = 64
# Posts an EVE device makes that this controller verifies and then drops.
DISCARDED = ("logs", "newlogs", "flowlog", "hardwarehealth")
STORE_TIMEOUT_S = 30.0  # a report not committed by then is answered 503 (the device sends it again)
RETRY_AFTER_S = 5


def _proto(body: bytes = b"", status: int = 200) -> Response:
    # EVE's client refuses a success answer without a Content-Type, even an empty one
    # (pkg/pillar/cmd/client/client.go, myPost: "no content-type").
    return Response(content=body, status_code=status, media_type=PROTO)


def _refuse(status: int, reason: str) -> Response:
    return Response(content=reason + "\n", status_code=status, media_type="text/plain")


def _busy(reason: str) -> Response:
    """503 with Retry-After: the device keeps the message and sends it again (EVE retries any 5xx)."""
    return Response(content=reason + "\n", status_code=503, media_type="text/plain",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


class DeviceAPI:
    """The device requests, made cheap for fleets (issue 16).

    A config poll answered 304 costs one SQL statement: the sender's row, read
    afresh on every request so that a deleted or re-keyed device is refused at
    once by every controller process. What is derived from that row (the
    config hash, the signed answer, the parsed certificate) is cached by the
    row's own values, so it cannot be stale. Info and metrics go through the
    group-committing :class:`ReportWriter`; "last seen" is written once a second.
    """

    def __init__(self, ctx: ControllerContext) -> None:
        self.ctx = ctx
        self.configs = ConfigCache()
        self.writer = ReportWriter(ctx.store)
        self._certs: bytes | None = None

    def start(self) -> None:
        """Start the background writer (the app's lifespan calls this)."""
        self.writer.start()

    def stop(self) -> None:
        """Store what is queued and stop the writer."""
        self.writer.stop()

    def _seal(self, msg: Any) -> bytes:
        return seal_message(msg, self.ctx.signing, hash_form="pem")

    def _authenticate(self, body: bytes, msg_type: Any, path_uuid: str | None) -> tuple[Any, Sender]:
        """Verify the signature, then check the signer is the device the URL names.

        With ``msg_type`` None the payload is returned as bytes, unparsed.
        The sender's row is read once: the certificate that verified the
        signature is the one its hash named, so it is that device.
        """
        found: list[Sender] = []

        def lookup(h: bytes) -> bytes | None:
            sender = self.ctx.store.sender(bytes(h))
            if sender is None:
                return None
            found.append(sender)
            return sender.device_cert_pem

        if msg_type is None:
            msg, _cert = open_container(body, lookup)
        else:
            msg, _cert = open_message(body, msg_type, lookup)
        if not found:
            raise AuthError(401, "unknown device certificate")
        sender = found[0]
        if path_uuid is not None and path_uuid.lower() != sender.uuid:
            try:
                self.ctx.store.get_device(path_uuid)
            except NotFound:
                raise AuthError(404, f"no device {path_uuid}") from None
            raise AuthError(403, "signed by another device than the one in the URL")
        self.writer.seen(sender.uuid, self.ctx.store.now())
        return msg, sender

    def certs(self) -> Response:
        if self._certs is None:  # the same certificates for the life of the process: signed once
            self._certs = self._seal(controller_certs(self.ctx.signing, self.ctx.ecdh))
        return _proto(self._certs)

    def register(self, body: bytes) -> Response:
        try:
            msg, onboard_pem = open_message(body, m.ZRegisterMsg, lambda h: self.ctx.store.onboarding_cert(bytes(h)),
                                            allow_embedded_cert=True)
        except AuthError as exc:
            # an onboarding certificate nobody registered is "forbidden", not "who are you"
            return _refuse(403 if exc.status == 401 else exc.status, exc.reason)
        onboard_hash = der_hash(onboard_pem, SHA256_32)
        if self.ctx.store.onboarding_cert(onboard_hash) is None:
            return _refuse(403, "unknown onboarding certificate")
        try:
            self.ctx.store.register(onboard_hash, [msg.serial, msg.softSerial], _device_pem(msg.pemCert))
        except NotFound as exc:
            return _refuse(403, str(exc))
        except Conflict as exc:
            return _refuse(409, str(exc))
        except Invalid as exc:
            return _refuse(400, str(exc))
        return _proto(status=201)

    def uuid(self, body: bytes) -> Response:
        _req, sender = self._authenticate(body, m.UuidRequest, None)
        return _proto(self._seal(m.UuidResponse(uuid=sender.uuid)))

    def attest(self, body: bytes, path_uuid: str) -> Response:
        """Adam's no-TPM attestation: a nonce, then SUCCESS and the device's integrity token for any quote.

        TPM quotes (with PCR values) are not verified against PCR templates:
        the quote must follow a nonce of this round, and the answer is the
        same as for a device without a TPM.
        """
        req, sender = self._authenticate(body, m.ZAttestReq, path_uuid)
        dev = sender
        store = self.ctx.store
        resp = m.ZAttestResponse()
        if req.reqType == m.ZAttestReqType.ATTEST_REQ_NONCE:
            nonce = secrets.token_bytes(NONCE_BYTES)
            store.new_attest_nonce(dev.uuid, nonce)
            resp.respType = m.ZAttestRespType.ATTEST_RESP_NONCE
            resp.nonce.nonce = nonce
        elif req.reqType == m.ZAttestReqType.ATTEST_REQ_QUOTE:
            resp.respType = m.ZAttestRespType.ATTEST_RESP_QUOTE_RESP
            if store.attest_nonce(dev.uuid) is None:
                resp.quoteResp.response = m.ZAttestResponseCode.Z_ATTEST_RESPONSE_CODE_NONCE_MISMATCH
            else:
                resp.quoteResp.response = m.ZAttestResponseCode.Z_ATTEST_RESPONSE_CODE_SUCCESS
                resp.quoteResp.integrity_token = store.integrity_token(
                    dev.uuid, issue=lambda: secrets.token_hex(TOKEN_BYTES).encode()) or b""
                escrowed = store.storage_keys(dev.uuid)
                if escrowed and req.quote.pcr_values:
                    resp.quoteResp.keys.extend(m.AttestStorageKeys.FromString(escrowed).keys)
        elif req.reqType == m.ZAttestReqType.ATTEST_REQ_CERT:
            for zc in req.certs:
                if zc.type == m.ZCertType.CERT_TYPE_DEVICE_ECDH_EXCHANGE:
                    problem = _ecdh_cert_problem(bytes(zc.cert), dev)
                    if problem:
                        return _refuse(400, f"device ECDH certificate refused: {problem}")
                    store.set_device_ecdh_cert(dev.uuid, bytes(zc.cert))
            resp.respType = m.ZAttestRespType.ATTEST_RESP_CERT
        elif req.reqType == m.ZAttestReqType.Z_ATTEST_REQ_TYPE_STORE_KEYS:
            resp.respType = m.ZAttestRespType.Z_ATTEST_RESP_TYPE_STORE_KEYS
            token = store.integrity_token(dev.uuid)
            codes = m.AttestStorageKeysResponseCode
            if not token or bytes(req.storage_keys.integrity_token) != token:
                resp.storage_keys_resp.response = codes.ATTEST_STORAGE_KEYS_RESPONSE_CODE_ITOKEN_MISMATCH
            else:
                store.set_storage_keys(dev.uuid, req.storage_keys.SerializeToString(deterministic=True))
                resp.storage_keys_resp.response = codes.ATTEST_STORAGE_KEYS_RESPONSE_CODE_SUCCESS
        else:
            return _refuse(400, f"attest request type {req.reqType} is not one this controller answers")
        return _proto(self._seal(resp), 201)

    def config(self, body: bytes, path_uuid: str | None, peer: str | None = None) -> Response:
        req, sender = self._authenticate(body, m.ConfigRequest, path_uuid)
        dev: Sender | Device = sender
        token = sender.integrity_token
        if not token or bytes(req.integrity_token) != token:
            # adam pkg/server/commonHandler.go, configProcess: enforceIntegrityCheck -> 403
            return _refuse(403, "integrity token missing or not current: attest first")
        mode = self.ctx.encrypt_credentials
        if mode == "auto" and peer is not None and is_loopback_host(peer):
            mode = "never"  # a device on this very host: nothing on the way to hide credentials from
        key = ConfigKey.of(dev, mode)
        digest = sender.config_hash if sender.config_hash_key == key.stored else self.configs.config_hash(key)
        if digest is None or req.configHash != digest:
            signed = self.configs.signed(key)
            if signed is not None:
                return _proto(signed)
            snap = self.ctx.store.config_snapshot(dev.uuid)
            cfg = config_from_snapshot(snap, CredentialEncryption(self.ctx.ecdh, mode))
            digest = config_hash(cfg)
            # Kept under the version the snapshot itself was read at, which may be newer than the sender row's.
            key = ConfigKey.of(snap.device, mode)
            self.writer.hashed(dev.uuid, key.config_version, key.stored, digest)  # every process, every restart
            if req.configHash != digest:
                signed = self._seal(m.ConfigResponse(config=cfg, configHash=digest))
                self.configs.put(key, digest, signed)
                return _proto(signed)
            self.configs.put(key, digest)
            dev = snap.device
        if dev.config_acked_version != dev.config_version:  # it runs what it would get: news only once
            self.writer.acked(dev.uuid, dev.config_version)
        return Response(status_code=304)

    def info(self, body: bytes, path_uuid: str) -> Response:
        return self.settle(self.report(body, path_uuid, "info"))

    def metrics(self, body: bytes, path_uuid: str) -> Response:
        return self.settle(self.report(body, path_uuid, "metrics"))

    def discard(self, body: bytes, path_uuid: str) -> Response:
        """Verify a post this controller does not keep (logs, flow logs, hardware health) and accept it."""
        self._authenticate(body, None, path_uuid)
        return _proto(status=201)

    def report(self, body: bytes, path_uuid: str, kind: str) -> Response | Pending:
        """Verify an info or metrics post, refuse one that names another device, and queue it for the writer.

        Returns the refusal, or the pending commit: the answer (201) waits for it (:meth:`settle`).
        """
        msg_type, dev_field, decode = _REPORTS[kind]
        msg, sender = self._authenticate(body, msg_type, path_uuid)
        dev = sender
        named = getattr(msg, dev_field)
        if named and named.lower() != dev.uuid:
            return _refuse(403, f"{kind} names another device")
        try:
            return Pending(dev.uuid, kind, self.writer.submit(decode(dev.uuid, msg)))
        except Invalid as exc:
            return _refuse(400, str(exc))
        except Overloaded as exc:
            return _busy(str(exc))

    @staticmethod
    def settle(pending: Response | Pending) -> Response:
        """Wait for the commit on this thread (in-process callers; HTTP requests await it instead)."""
        if isinstance(pending, Response):
            return pending
        try:
            pending.future.result(timeout=STORE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - answered by what it was
            return pending.answer(exc)
        return pending.answer(None)


@dataclass(frozen=True)
class Pending:
    """A report queued for the writer: answered 201 once committed."""

    device_uuid: str
    kind: str
    future: Future[int]

    def answer(self, error: BaseException | None) -> Response:
        if error is None:
            return _proto(status=201)
        if isinstance(error, NotFound):
            return _refuse(404, str(error))
        if isinstance(error, Invalid):
            return _refuse(400, str(error))
        log.warning("report not stored", device=self.device_uuid, kind=self.kind, error=str(error))
        return _busy(f"{self.kind} not stored: {error}")


_REPORTS: dict[str, tuple[Any, str, Callable[[str, Any], Report]]] = {
    "info": (m.ZInfoMsg, "devId", infomsg.info_report),
    "metrics": (m.ZMetricMsg, "devID", infomsg.metrics_report),
}


def _ecdh_cert_problem(cert_pem: bytes, dev: Sender) -> str:
    """Why a DEVICE_ECDH_EXCHANGE certificate cannot be used ("" when it can).

    EVE's is a P-256 key certified by the device key (eve pkg/pillar/cmd/tpmmgr/tpmmgr.go:1058-1125):
    anything else could let a third party receive the device's credentials.
    """
    try:
        cert = load_cert(cert_pem)
        issuer = load_cert(dev.device_cert_pem or b"")
    except TrustError as exc:
        return str(exc)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return "its key is not ECDSA P-256"
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return "it is not signed by the device certificate"
    return ""


def _device_pem(pem_cert: bytes) -> bytes:
    """ZRegisterMsg.pemCert is base64 of the PEM (EVE's selfRegister); a bare PEM is tolerated."""
    try:
        return pem_from_base64(pem_cert)
    except ValueError as exc:
        raise Invalid(f"pemCert is {exc}") from None


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """A rare request (register, attest: writes that may wait for a lock) on the thread pool."""
    try:
        return await run_in_threadpool(fn, *args)
    except AuthError as exc:
        return _refuse(exc.status, exc.reason)
    except SQLAlchemyError as exc:  # the database is unreachable or restarting: the device retries
        log.warning("device request failed on the database", error=str(exc).splitlines()[0])
        return _busy("the controller's database is not available; retry")


def _now(fn: Callable[..., Any], *args: Any) -> Any:
    """A hot request (config, reports) right on the event loop.

    Why not the thread pool: these are a signature check and one indexed
    read, and handing them to a thread and back cost more CPU than doing
    them (about a fifth of the controller's time under load). Their one
    write, a report, is waited for asynchronously.
    """
    try:
        return fn(*args)
    except AuthError as exc:
        return _refuse(exc.status, exc.reason)
    except SQLAlchemyError as exc:
        log.warning("device request failed on the database", error=str(exc).splitlines()[0])
        return _busy("the controller's database is not available; retry")


async def _committed(pending: Response | Pending) -> Response:
    if isinstance(pending, Response):
        return pending
    try:
        await asyncio.wait_for(asyncio.wrap_future(pending.future), STORE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - answered by what it was
        return pending.answer(exc)
    return pending.answer(None)


def asgi(api: DeviceAPI) -> Router:
    """The device API as a plain Starlette router under ``PREFIX``.

    Why not FastAPI routes: every body is a signed protobuf, so there is
    nothing for FastAPI to validate or document, and its per-request
    machinery (dependency solving, middleware) cost more CPU than the request
    itself. The controller app hands ``PREFIX`` paths straight to this.
    """

    def peer(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def ping(_request: Request) -> Response:
        return Response(status_code=200)

    async def certs(_request: Request) -> Response:
        return _now(api.certs)

    async def register(request: Request) -> Response:
        return await _call(api.register, await request.body())

    async def uuid_(request: Request) -> Response:
        return _now(api.uuid, await request.body())

    async def config(request: Request) -> Response:
        return _now(api.config, await request.body(), request.path_params.get("uuid"), peer(request))

    async def attest(request: Request) -> Response:
        return await _call(api.attest, await request.body(), request.path_params["uuid"])

    async def info(request: Request) -> Response:
        return await _committed(_now(api.report, await request.body(), request.path_params["uuid"], "info"))

    async def metrics(request: Request) -> Response:
        return await _committed(_now(api.report, await request.body(), request.path_params["uuid"], "metrics"))

    async def discarded(request: Request) -> Response:
        kind = request.path_params.get("kind")
        if kind is not None and kind not in DISCARDED:
            return _refuse(404, f"no such device API call: {kind}")
        return _now(api.discard, await request.body(), request.path_params["uuid"])

    post = ["POST"]
    return Router(routes=[
        Route(PREFIX + "/ping", ping, methods=["GET"]),
        Route(PREFIX + "/certs", certs, methods=["GET", "POST"]),
        Route(PREFIX + "/register", register, methods=post),
        Route(PREFIX + "/uuid", uuid_, methods=post),
        Route(PREFIX + "/config", config, methods=post),
        Route(PREFIX + "/id/{uuid}/config", config, methods=post),
        Route(PREFIX + "/id/{uuid}/attest", attest, methods=post),
        Route(PREFIX + "/id/{uuid}/info", info, methods=post),
        Route(PREFIX + "/id/{uuid}/metrics", metrics, methods=post),
        Route(PREFIX + "/id/{uuid}/{kind}", discarded, methods=post),
        Route(PREFIX + "/id/{uuid}/apps/instances/id/{app_uuid}/logs", discarded, methods=post),
        Route(PREFIX + "/id/{uuid}/apps/instanceid/{app_uuid}/newlogs", discarded, methods=post),
    ])
