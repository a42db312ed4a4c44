"""Signed content trees: nothing of a content tree with ``siginfo`` becomes a volume until its signature holds.

Once a signed content tree's bytes are loaded and verified against its sha256,
the device fetches the signer's (and the intermediate) certificate from the
content tree's datastore, checks that the signer chains to the device's trust
anchors (the controller's root CA, plus an optional ``--content-trust``
bundle) and that the signature covers the content's sha256
(:mod:`edgevol.trust.content`, as EVE 5.6's verifier did). Meanwhile the
content tree is VERIFYING; a bad or unverifiable signature is an error on it,
kept in VERIFYING on the wire, and its volumes wait. A certificate the
datastore cannot serve right now is retried with backoff.

The verdict is remembered per (content, signature, certificate URLs, trust
anchors): a new config or a new trust bundle gets a fresh check, a restart
does not need one.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from edgevol.api import messages as m
from edgevol.device.datastores.base import PermanentError, TransientError
from edgevol.device.datastores.factory import DatastoreClients
from edgevol.device.errors import error, next_attempt
from edgevol.device.retry import Backoff
from edgevol.device.state import StateStore
from edgevol.log import get_logger
from edgevol.model.desired import ContentTree, Datastore, ObjectKind, Settings

log = get_logger("edgevol.signatures")
S = m.ZSwState
CERT_MAX_BYTES = 64 * 1024  # a certificate is a few KiB; a bigger answer is not one


def check_key(ct: ContentTree, digest: str, trust: bytes) -> str:
    """What a verdict is about: the content, its siginfo and the trust anchors it was judged with."""
    sig = ct.signature
    assert sig is not None
    h = hashlib.sha256()
    for part in (digest.encode(), sig.signer_cert_url.encode(), sig.intermediate_cert_url.encode(), sig.signature,
                 ct.datastore_id.encode(), hashlib.sha256(trust).digest()):
        h.update(len(part).to_bytes(4, "big") + part)
    return h.hexdigest()


def gate(row: dict[str, Any], key: str) -> dict[str, Any] | None:
    """Fields overriding a loaded signed tree's state: None when its signature holds.

    VERIFYING while no verdict is known for ``key``; the recorded error once one failed.
    """
    check = row["signature_check"] or {}
    if check.get("key") == key:
        if check.get("ok"):
            return None
        if not check.get("transient"):
            return {"state": S.ERROR, "error": check["error"], "stopped_state": S.VERIFYING}
    return {"state": S.VERIFYING, "progress": 100}


def due(row: dict[str, Any], key: str, now: float) -> bool:
    """True when a check should run now: no verdict for ``key`` yet, or a transient failure's backoff is over."""
    check = row["signature_check"] or {}
    if check.get("key") != key:
        return True
    return bool(check.get("transient")) and check.get("next_try", 0) <= now


class SignatureChecker:
    def __init__(self, store: StateStore, clients: DatastoreClients, trust: Callable[[], bytes]) -> None:
        self.store = store
        self.clients = clients
        self.trust = trust  # the PEM bundle of trust anchors, read when a check runs

    def check(self, ct: ContentTree, ds: Datastore, digest: str, key: str, settings: Settings) -> None:
        """One check (a worker task): fetch the certificates, verify, record the verdict on the content tree."""
        sig = ct.signature
        assert sig is not None
        row = self.store.get("content_trees", ct.uuid)
        if row is None:
            return
        previous = row["signature_check"] or {}
        attempt = previous.get("attempt", 0) + 1 if previous.get("key") == key else 1
        # The verifier (cryptography) is imported when a signed tree is first checked, not with the agent.
        from edgevol.trust.content import verify_content_signature
        from edgevol.trust.pki import TrustError

        try:
            signer = self.clients.fetch_small(ds, sig.signer_cert_url, CERT_MAX_BYTES)
            inter = [self.clients.fetch_small(ds, sig.intermediate_cert_url, CERT_MAX_BYTES)] \
                if sig.intermediate_cert_url else []
            verify_content_signature(digest, sig.signature, signer, self.trust(), _split_pems(inter))
        except TransientError as exc:
            backoff = Backoff(settings.retry_base_seconds, settings.retry_cap_seconds, settings.download_max_attempts)
            if not backoff.exhausted(attempt):
                delay = backoff.delay(attempt)
                record = error(f"signature: fetching the signer's certificates: {exc}", ObjectKind.CONTENT_TREE,
                               ct.uuid, ct.display_name, severity="warning",
                               retry=next_attempt(attempt, backoff.max_attempts, delay))
                self.store.update("content_trees", (ct.uuid,), signature_check={
                    "key": key, "ok": False, "transient": True, "attempt": attempt, "next_try": time.time() + delay},
                    error=record)
                return
            self._refuse(ct, key, f"fetching the signer's certificates: {exc} (gave up after {attempt} attempts)")
            return
        except PermanentError as exc:
            self._refuse(ct, key, f"fetching the signer's certificates: {exc}")
            return
        except (TrustError, ValueError) as exc:
            self._refuse(ct, key, str(exc))
            return
        log.info("content signature verified", content_tree=ct.uuid, sha256=digest)
        self.store.update("content_trees", (ct.uuid,), signature_check={"key": key, "ok": True}, error=None)

    def _refuse(self, ct: ContentTree, key: str, why: str) -> None:
        log.error("content signature refused", content_tree=ct.uuid, error=why)
        record = error(f"signature: {why}; nothing of this content becomes a volume", ObjectKind.CONTENT_TREE,
                       ct.uuid, ct.display_name, retry="fix siginfo or the certificates, or change the trust "
                       "anchors; checked again when either changes")
        self.store.update("content_trees", (ct.uuid,), state=S.ERROR, error=record,
                          signature_check={"key": key, "ok": False, "error": record.to_dict()})


def _split_pems(bodies: list[bytes]) -> list[bytes]:
    """Each PEM certificate in ``bodies`` on its own (an intermediate URL may serve a bundle)."""
    out = []
    marker = b"-----END CERTIFICATE-----"
    for body in bodies:
        for chunk in body.split(marker):
            if b"-----BEGIN CERTIFICATE-----" in chunk:
                out.append(chunk.strip() + b"\n" + marker + b"\n")
    if bodies and not out:
        raise ValueError("the intermediate certificate URL serves no PEM certificate")
    return out
