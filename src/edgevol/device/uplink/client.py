"""The device's side of EVE API v2: every call signed, every answer verified.

One call is one attempt; callers decide about retries. Errors say what the
controller answered (status and reason) without leaking keys.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from edgevol.api import messages as m
from edgevol.trust.envelope import AuthError, cert_lookup, open_controller_certs, open_message, seal_message
from edgevol.trust.pki import Credential, TrustError

PROTO = "application/x-proto-binary"


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
                 tls_ca_pems: list[bytes] | None = None, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.root_ca_pem = root_ca_pem
        self.device = device
        self._signer_pem: bytes | None = None
        verify: Any = True
        if self.base_url.startswith("https://"):
            ctx = ssl.create_default_context()
            ctx.load_verify_locations(cadata=root_ca_pem.decode())
            for pem in tls_ca_pems or []:
                ctx.load_verify_locations(cadata=pem.decode())
            verify = ctx
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify, trust_env=False,
                                  headers={"Content-Type": PROTO, "Accept": PROTO})

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        try:
            return self._http.request(method, path, content=body)
        except httpx.HTTPError as exc:
            raise ControllerError(f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _refused(resp: httpx.Response, what: str) -> ControllerError:
        reason = resp.text.strip()[:200] if resp.headers.get("content-type", "").startswith("text") else ""
        return ControllerError(f"{what}: controller answered {resp.status_code} {reason}".rstrip(),
                               resp.status_code)

    def ping(self) -> None:
        resp = self._request("GET", "/api/v2/edgedevice/ping")
        if resp.status_code != 200:
            raise self._refused(resp, "ping")

    def signer(self) -> bytes:
        """The controller's signing certificate, checked against our root CA (cached)."""
        if self._signer_pem is None:
            resp = self._request("GET", "/api/v2/edgedevice/certs")
            if resp.status_code != 200:
                raise self._refused(resp, "certs")
            try:
                _certs, self._signer_pem = open_controller_certs(resp.content, self.root_ca_pem)
            except (TrustError, AuthError) as exc:
                raise ControllerError(f"controller certificates are not trusted: {exc}", 495) from exc
        return self._signer_pem

    def _verify(self, data: bytes, msg_type: Any) -> Any:
        try:
            msg, _ = open_message(data, msg_type, cert_lookup([self.signer()]))
        except AuthError as exc:
            raise ControllerError(f"answer not signed by the controller: {exc}", 495) from exc
        return msg

    def register(self, onboarding: Credential, serial: str) -> int:
        """Register this device's certificate; returns the HTTP status (201 new, 409 already known)."""
        msg = m.ZRegisterMsg(pemCert=self.device.cert_pem, serial=serial)
        body = seal_message(msg, onboarding, include_cert=True)
        resp = self._request("POST", "/api/v2/edgedevice/register", body)
        if resp.status_code not in (200, 201, 409):
            raise self._refused(resp, "register")
        return resp.status_code

    def config(self, device_uuid: str | None, config_hash: str) -> Any | None:
        """The new ``ConfigResponse``, or ``None`` when the controller says nothing changed (304)."""
        path = f"/api/v2/edgedevice/id/{device_uuid}/config" if device_uuid else "/api/v2/edgedevice/config"
        body = seal_message(m.ConfigRequest(configHash=config_hash), self.device)
        resp = self._request("POST", path, body)
        if resp.status_code == 304:
            return None
        if resp.status_code != 200:
            raise self._refused(resp, "config")
        return self._verify(resp.content, m.ConfigResponse)

    def post(self, device_uuid: str, kind: str, payload: bytes) -> None:
        """Deliver one signed info or metrics message; raises unless the controller accepted it.

        Only to a controller whose certificates chain to our root CA: a device whose config is
        refused as untrusted must not keep reporting its state to that same controller.
        """
        self.signer()
        body = seal_message(_Raw(payload), self.device)
        resp = self._request("POST", f"/api/v2/edgedevice/id/{device_uuid}/{kind}", body)
        if resp.status_code not in (200, 201, 202, 204):
            raise self._refused(resp, kind)


class _Raw:
    """An already serialized message, sealed as is (the outbox stores bytes)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's spelling
        return self._data
