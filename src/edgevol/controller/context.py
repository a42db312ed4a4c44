"""Everything a running controller needs: its database, its keys and the admin token.

Keys are created on first start under ``DATA/pki`` (0600) and reused after:
a root CA that devices are given out of band, a signing certificate
issued by it that signs every answer to a device, and an ECDH_EXCHANGE
certificate (listed in ``/certs``, which EVE devices require) whose key
encrypts datastore credentials for a device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from edgevol.controller.retention import PRUNE_INTERVAL_S
from edgevol.controller.store import ControllerStore
from edgevol.fsutil import atomic_write_bytes
from edgevol.trust.pki import Credential, TrustError, create_root_ca, issue, load_or_create


@dataclass(frozen=True)
class Retention:
    """What the controller keeps of what devices report, and how often it prunes the rest (in the background)."""

    metrics_days: float = 7.0
    metrics_per_volume: int = 1000
    history_per_object: int = 50  # state changes kept per object generation
    prune_interval_s: float = PRUNE_INTERVAL_S  # 0: never prune

    def to_env(self) -> dict[str, str]:
        """For worker processes, which load the context afresh (see edgevol.controller.app.app_from_env)."""
        return {ENV_RETENTION: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls) -> Retention:
        raw = os.environ.get(ENV_RETENTION)
        return cls(**json.loads(raw)) if raw else cls()


ENV_RETENTION = "EDGEVOL_CONTROLLER_RETENTION"


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
    retention: Retention = field(default_factory=lambda: Retention())

    @property
    def root_ca_path(self) -> Path:
        return self.data_dir / "pki" / "root-ca.pem"


def default_db_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'controller.db'}"


def admin_token(data_dir: Path, *, create: bool = True) -> str:
    """The admin API token, created once (0600); EDGEVOL_TOKEN may override it for a deployment."""
    path = data_dir / "admin.token"
    if not path.exists() and create:
        atomic_write_bytes(path, secrets.token_urlsafe(32).encode() + b"\n", mode=0o600)
    return os.environ.get("EDGEVOL_CONTROLLER_TOKEN") or path.read_text().strip()


def load_context(data_dir: Path, db_url: str | None = None, encrypt_credentials: str = "auto", *,
                 prepare: bool = True, retention: Retention | None = None) -> ControllerContext:
    """The context, making keys, admin token and schema first when ``prepare``.

    ``prepare=False`` is for the worker processes of ``controller run
    --workers N``: their parent prepared everything once before starting them,
    so workers only load (a missing file is an error, never a second key made
    by a worker racing another).
    """
    if encrypt_credentials not in ("auto", "always", "never"):
        raise ValueError(f"encrypt_credentials must be auto, always or never, not {encrypt_credentials!r}")
    pki = data_dir / "pki"

    def made(name: str, factory: Callable[[], Credential]) -> Credential:
        if not prepare and not (pki / f"{name}.pem").exists():
            raise TrustError(f"{pki / name}.pem is missing: the controller's parent process makes it")
        return load_or_create(pki, name, factory)

    if prepare:
        data_dir.mkdir(parents=True, exist_ok=True)
    root = made("root-ca", lambda: create_root_ca("edgevol controller root CA"))
    signing = made("signing", lambda: issue(root, "edgevol controller signing"))
    ecdh = made("ecdh", lambda: issue(root, "edgevol controller ECDH exchange", purpose="ecdh"))
    retention = retention or Retention()
    store = ControllerStore(db_url or default_db_url(data_dir), history_limit=retention.history_per_object,
                            metrics_retention=timedelta(days=retention.metrics_days),
                            metrics_per_volume=retention.metrics_per_volume)
    if prepare:
        store.migrate()
    return ControllerContext(data_dir=data_dir, store=store, root_ca=root, signing=signing,
                             admin_token=admin_token(data_dir, create=prepare), ecdh=ecdh,
                             encrypt_credentials=encrypt_credentials, retention=retention)
