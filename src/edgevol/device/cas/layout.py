"""OCI image-layout documents: ``oci-layout``, ``index.json`` and descriptors.

Kept apart from the store so the JSON shapes (what skopeo/umoci read) live
in one place and are rendered deterministically (sorted keys and entries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .digests import check_digest

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor; ``digest`` is bare hex, as everywhere in the API."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_digest(self.digest)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"descriptor size must be a non-negative int: {self.size!r}")
        if not isinstance(self.media_type, str) or not self.media_type:
            raise ValueError("descriptor media_type must be a non-empty string")

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON form (``digest`` gains its ``sha256:`` prefix)."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": "sha256:" + self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Descriptor:
        """Parse an OCI descriptor; only sha256 digests are accepted."""
        digest = obj.get("digest")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise ValueError(f"unsupported descriptor digest: {digest!r}")
        return cls(
            media_type=obj.get("mediaType", ""),
            digest=digest[len("sha256:"):],
            size=obj.get("size", -1),
            annotations=dict(obj.get("annotations") or {}),
        )


def render_layout() -> bytes:
    return _dump({"imageLayoutVersion": LAYOUT_VERSION})


def render_index(roots: dict[str, Descriptor]) -> bytes:
    """index.json with one descriptor per root, sorted by root name."""
    manifests = []
    for name in sorted(roots):
        if not isinstance(name, str) or not name:
            raise ValueError(f"root name must be a non-empty string: {name!r}")
        d = roots[name]
        tagged = Descriptor(d.media_type, d.digest, d.size, {**d.annotations, REF_NAME: name})
        manifests.append(tagged.to_json())
    return _dump({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})


def parse_index(data: bytes) -> dict[str, Descriptor]:
    """Roots named by their ref.name annotation (unnamed entries are skipped)."""
    doc = json.loads(data)
    roots: dict[str, Descriptor] = {}
    for obj in doc.get("manifests", []):
        d = Descriptor.from_json(obj)
        name = d.annotations.get(REF_NAME)
        if name:
            rest = {k: v for k, v in d.annotations.items() if k != REF_NAME}
            roots[name] = Descriptor(d.media_type, d.digest, d.size, rest)
    return roots


def layout_is_valid(data: bytes) -> bool:
    try:
        return json.loads(data).get("imageLayoutVersion") == LAYOUT_VERSION
    except (ValueError, AttributeError):
        return False


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode()
