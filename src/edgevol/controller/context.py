"""Everything a running controller needs: its database, its keys and the admin token.

Keys are created on first start under ``DATA/pki`` (0600) and reused after:
a root CA that devices are given out of band, a signing certificate
issued by it that signs every answer to a device, and an ECDH_EXCHANGE
certificate (listed in ``/certs``, which EVE devices require) whose key
encrypts datastore credentials for a device.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from edgevol.controller.retention import PRUNE_INTERVAL_S
from edgevol.controller.store import ControllerStore
from edgevol.fsutil import atomic_write_bytes
from edgevol.trust.pki import Credential, create_root_ca, issue, load_or_create


@dataclass
class ControllerContext:
    data_dir: Path
    store: ControllerStore
    root_ca: Credential
    signing: Credential
    admin_token: str
    ecdh: Credential
    # "auto" | "always" | "never": see edgevol.controller.configbuild.CredentialEncryption.
    encrypt_credentials: str = "auto"
    prune_interval_s: float = PRUNE_INTERVAL_S  # how often retention runs (0: never)

    @property
    def root_ca_path(self) -> Path:
        return self.data_dir / "pki" / "root-ca.pem"


def default_db_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'controller.db'}"


def admin_token(data_dir: Path) -> str:
    """The admin API token, created once (0600); EDGEVOL_TOKEN may override it for a deployment."""
    path = data_dir / "admin.token"
    if not path.exists():
        atomic_write_bytes(path, secrets.token_urlsafe(32).encode() + b"\n", mode=0o600)
    return os.environ.get("EDGEVOL_CONTROLLER_TOKEN") or path.read_text().strip()


def load_context(data_dir: Path, db_url: str | None = None, encrypt_credentials: str = "auto") -> ControllerContext:
    if encrypt_credentials not in ("auto", "always", "never"):
        raise ValueError(f"encrypt_credentials must be auto, always or never, not {encrypt_credentials!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    pki = data_dir / "pki"
    root = load_or_create(pki, "root-ca", lambda: create_root_ca("edgevol controller root CA"))
    signing = load_or_create(pki, "signing", lambda: issue(root, "edgevol controller signing"))
    ecdh = load_or_create(pki, "ecdh", lambda: issue(root, "edgevol controller ECDH exchange", purpose="ecdh"))
    store = ControllerStore(db_url or default_db_url(data_dir))
    store.migrate()
    return ControllerContext(data_dir=data_dir, store=store, root_ca=root, signing=signing,
                             admin_token=admin_token(data_dir), ecdh=ecdh, encrypt_credentials=encrypt_credentials)
