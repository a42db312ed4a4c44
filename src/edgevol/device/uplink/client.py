"""The device's side of EVE API v2: every call signed, every answer verified.

One call is one attempt; callers decide about retries. Errors say what the
controller answered (status and reason) without leaking keys. Requests are
built as EVE's own client builds them (pkg/pillar/controllerconn/authen.go,
pkg/pillar/cmd/client/client.go, pkg/pillar/cmd/zedagent/attesttask.go), so
the same device onboards to edgevol's controller and to LF Edge Adam.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import httpx

from edgevol.api import messages as m
from edgevol.device.uplink.wiretrace import WireTrace
from edgevol.fsutil import atomic_write_bytes
from edgevol.trust.envelope import AuthError, cert_lookup, open_controller_certs, open_message, seal_message
from edgevol.trust.pki import Credential, TrustError, pem_hash

PROTO = "application/x-proto-binary"
API = "/api/v2/edgedevice"
# EVE's client counts 200 and 201 as success on every call (pkg/pillar/cmd/client/client.go:530-536, myPost).
ACCEPTED = (200, 201)


class ControllerError(Exception):
    """The controller could not be reached or refused a call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


class ControllerClient:
    def __init__(self, base_url: str, root_ca_pem: bytes, device: Credential, *,
                 tls_ca_pems: list[bytes] | None = None, timeout: float = 15.0,
                 certs_path: Path | None = None, trace: WireTrace | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        """``transport`` replaces the network (tests replay recorded controller answers through it)."""
        self.base_url = base_url.rstrip("/")
        self.root_ca_pem = root_ca_pem
        self.device = device
        self.certs_path = certs_path
        self.trace = trace
        self._signer_pem: bytes | None = None
        verify: Any = True
        if self.base_url.startswith("https://"):
            ctx = ssl.create_default_context()
            ctx.load_verify_locations(cadata=root_ca_pem.decode())
            for pem in tls_ca_pems or []:
                ctx.load_verify_locations(cadata=pem.decode())
            verify = ctx
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify, trust_env=False,
                                  headers={"Content-Type": PROTO, "Accept": PROTO}, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        try:
            resp = self._http.request(method, API + path, content=body)
        except httpx.HTTPError as exc:
            raise ControllerError(f"{method} {self.base_url}{API}{path}: {type(exc).__name__}: {exc}") from exc
        if self.trace is not None:
            self.trace.record(method, API + path, body, resp)
        return resp

    @staticmethod
    def _refused(resp: httpx.Response, what: str) -> ControllerError:
        reason = resp.text.strip()[:200] if resp.headers.get("content-type", "").startswith("text") else ""
        return ControllerError(f"{what}: controller answered {resp.status_code} {reason}".rstrip(),
                               resp.status_code)

    def ping(self) -> None:
        resp = self._request("GET", "/ping")
        if resp.status_code != 200:
            raise self._refused(resp, "ping")

    def forget_certs(self) -> None:
        """Fetch /certs again before the next verification (the controller's signer changed)."""
        self._signer_pem = None

    def signer(self) -> bytes:
        """The controller's signing certificate, checked against our root CA (cached).

        The verified ``ZControllerCert`` is kept at ``certs_path``, as EVE keeps
        its controllercerts checkpoint: the ECDH certificate in it decrypts
        datastore credentials.
        """
        if self._signer_pem is None:
            resp = self._request("GET", "/certs")
            if resp.status_code != 200:
                raise self._refused(resp, "certs")
            try:
                certs, signer = open_controller_certs(resp.content, self.root_ca_pem)
            except (TrustError, AuthError) as exc:
                raise ControllerError(f"controller certificates are not trusted: {exc}", 495) from exc
            if self.certs_path is not None:
                atomic_write_bytes(self.certs_path, certs.SerializeToString(deterministic=True), mode=0o644)
            self._signer_pem = signer
        return self._signer_pem

    def _verify(self, data: bytes, msg_type: Any) -> Any:
        try:
            msg, _ = open_message(data, msg_type, cert_lookup([self.signer()], "pem"))
        except AuthError as exc:
            raise ControllerError(f"answer not signed by the controller: {exc}", 495) from exc
        return msg

    def _call(self, path: str, msg: Any, what: str, answer: Any = None) -> Any:
        """POST a signed ``msg``; verify and parse an ``answer`` message when one is expected."""
        resp = self._request("POST", path, seal_message(msg, self.device))
        if resp.status_code not in ACCEPTED:
            raise self._refused(resp, what)
        if answer is None:
            return None
        if not resp.content:
            raise ControllerError(f"{what}: controller answered {resp.status_code} without a body",
                                  resp.status_code)
        return self._verify(resp.content, answer)

    def register(self, onboarding: Credential, serial: str, soft_serial: str = "") -> int:
        """Register this device's certificate; returns the HTTP status (201 new, 409 already known).

        As EVE's selfRegister: pemCert and senderCert are base64 of the PEM,
        the envelope is signed by the onboarding key and names it by the sha256
        of its DER; the controller tries ``serial`` then ``soft_serial``.
        """
        msg = m.ZRegisterMsg(pemCert=base64.b64encode(self.device.cert_pem), serial=serial,
                             softSerial=soft_serial)
        body = seal_message(msg, onboarding, include_cert=True)
        resp = self._request("POST", "/register", body)
        if resp.status_code not in (*ACCEPTED, 409):
            raise self._refused(resp, "register")
        return resp.status_code

    def uuid(self) -> str:
        """The device UUID the controller assigned (POST /uuid, signed UuidResponse)."""
        answer = self._call("/uuid", m.UuidRequest(), "uuid", m.UuidResponse)
        value = answer.uuid.strip()
        if not value:
            raise ControllerError("uuid: the controller's answer names no device UUID")
        return str(value)

    def attest(self, device_uuid: str, ecdh_cert_pem: bytes | None = None) -> bytes:
        """Attest without a TPM, as EVE does on such hardware: NONCE, then QUOTE; returns the integrity token.

        With ``ecdh_cert_pem``, the device's ECDH certificate goes first in a
        CERT request, as EVE's tpmmgr publishes it to the controller
        (pkg/pillar/cmd/tpmmgr/tpmmgr.go:1158-1185, 1359-1361): hash
        SHA256_16BYTES of the PEM, type DEVICE_ECDH_EXCHANGE. The quote carries
        no PCR values; Adam then skips quote validation and answers SUCCESS
        with the token (lf-edge/adam pkg/server/attestation.go:279-289).
        """
        path = f"/id/{device_uuid}/attest"
        if ecdh_cert_pem is not None:
            h16 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES
            cert = m.ZCert(hashAlgo=h16, certHash=pem_hash(ecdh_cert_pem, h16),
                           type=m.ZCertType.CERT_TYPE_DEVICE_ECDH_EXCHANGE, cert=ecdh_cert_pem)
            answer = self._call(path, m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_CERT, certs=[cert]),
                                "attest cert", m.ZAttestResponse)
            if answer.respType != m.ZAttestRespType.ATTEST_RESP_CERT:
                raise ControllerError("attest: the controller did not take the device's ECDH certificate")
        nonce = self._call(path, m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_NONCE), "attest nonce",
                           m.ZAttestResponse)
        if nonce.respType != m.ZAttestRespType.ATTEST_RESP_NONCE or not nonce.nonce.nonce:
            raise ControllerError("attest: the controller sent no nonce")
        quote = self._call(path, m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_QUOTE, quote=m.ZAttestQuote()),
                           "attest quote", m.ZAttestResponse)
        if quote.respType != m.ZAttestRespType.ATTEST_RESP_QUOTE_RESP:
            raise ControllerError("attest: the controller did not answer the quote")
        code = quote.quoteResp.response
        if code != m.ZAttestResponseCode.Z_ATTEST_RESPONSE_CODE_SUCCESS:
            raise ControllerError(f"attest: the controller refused the quote "
                                  f"({m.ZAttestResponseCode.Name(code)})", 403)
        return bytes(quote.quoteResp.integrity_token)

    def config(self, device_uuid: str | None, config_hash: str, integrity_token: bytes = b"") -> Any | None:
        """The new ``ConfigResponse``, or ``None`` when the controller says nothing changed (304).

        A 403 means the integrity token is no longer valid (EVE attests again);
        a 404, that the controller has no config for us yet: callers tell them
        apart by ``ControllerError.status``.
        """
        path = f"/id/{device_uuid}/config" if device_uuid else "/config"
        body = seal_message(m.ConfigRequest(configHash=config_hash, integrity_token=integrity_token), self.device)
        resp = self._request("POST", path, body)
        if resp.status_code == 304:
            return None
        if resp.status_code not in ACCEPTED:
            raise self._refused(resp, "config")
        return self._verify(resp.content, m.ConfigResponse)

    def post(self, device_uuid: str, kind: str, payload: bytes) -> None:
        """Deliver one signed info or metrics message; raises unless the controller accepted it.

        Only to a controller whose certificates chain to our root CA: a device whose config is
        refused as untrusted must not keep reporting its state to that same controller.
        """
        self.signer()
        body = seal_message(_Raw(payload), self.device)
        resp = self._request("POST", f"/id/{device_uuid}/{kind}", body)
        if resp.status_code not in (*ACCEPTED, 202, 204):
            raise self._refused(resp, kind)


class _Raw:
    """An already serialized message, sealed as is (the outbox stores bytes)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's spelling
        return self._data
