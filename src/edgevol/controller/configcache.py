"""Config hashes and signed config answers, kept per device version so a poll does not rebuild them.

Why it can never serve a stale config: every change to what a device should
run bumps its ``config_version`` in the same transaction (see the store),
and a cache entry is found only under the exact key read from the device's
row in the request being answered: its uuid, when the row was created (a
device deleted and created again restarts at version 1), its version, its
certificate (credentials are encrypted for it) and how credentials go out.
Nothing is ever invalidated or expired for correctness, in this process or
any other: a new version simply is another key. Entries of older versions
are replaced (hashes, one per device) or fall out of a bounded LRU (signed
answers, bounded in bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from edgevol.controller.records import Device, Sender

SIGNED_BYTES = 64 << 20  # signed answers kept, at most


@dataclass(frozen=True)
class ConfigKey:
    device_uuid: str
    created_at: datetime
    config_version: int
    device_cert_hash: bytes | None
    encryption: str  # the effective CredentialEncryption mode

    @property
    def stored(self) -> str:
        """How the device's row names the config its ``config_hash`` is of (the row is the rest of the key)."""
        return f"{self.config_version}/{self.encryption}"

    @classmethod
    def of(cls, device: Device | Sender, encryption: str) -> ConfigKey:
        return cls(device.uuid, device.created_at, device.config_version, device.device_cert_hash, encryption)


class ConfigCache:
    """Thread-safe: in-process callers (tests, the benchmark) may poll from several threads."""

    def __init__(self, signed_bytes: int = SIGNED_BYTES) -> None:
        self._hashes: dict[str, tuple[ConfigKey, str]] = {}  # device uuid -> its latest key and hash
        self._signed: OrderedDict[ConfigKey, bytes] = OrderedDict()
        self._signed_bytes = 0
        self._budget = signed_bytes
        self._lock = threading.Lock()
        self.builds = 0  # configs built (cache misses), for tests and the benchmark

    def config_hash(self, key: ConfigKey) -> str | None:
        with self._lock:
            found = self._hashes.get(key.device_uuid)
        return found[1] if found is not None and found[0] == key else None

    def signed(self, key: ConfigKey) -> bytes | None:
        with self._lock:
            body = self._signed.get(key)
            if body is not None:
                self._signed.move_to_end(key)
            return body

    def put(self, key: ConfigKey, digest: str, signed: bytes | None = None) -> None:
        with self._lock:
            self.builds += 1
            self._hashes[key.device_uuid] = (key, digest)
            if signed is None or len(signed) > self._budget:
                return
            old = self._signed.pop(key, None)
            self._signed_bytes -= len(old) if old is not None else 0
            self._signed[key] = signed
            self._signed_bytes += len(signed)
            while self._signed_bytes > self._budget:
                _, dropped = self._signed.popitem(last=False)
                self._signed_bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._hashes)
