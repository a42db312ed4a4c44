"""Where a CONTAINER content tree lives: registry address + repository + tag/digest.

A content tree of format CONTAINER names its image in two halves: the
datastore (``docker://HOST[:PORT]`` plus an optional ``dpath`` prefix) and the
tree's URL (``REPO:TAG``, ``REPO@sha256:HEX`` or just ``REPO``). This module
joins them into one validated :class:`ImageRef`, so the registry client never
sees a name a registry would reject or, worse, interpret differently.

Plain HTTP is only allowed for loopback registries, the same default Docker
uses: anywhere else an attacker on the path could swap the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


from edgevol.netaddr import is_loopback_host

from .base import ConfigError

__all__ = [
    "DIGEST_RE",
    "ImageRef",
    "is_loopback_host",
    "parse_image_ref",
    "split_registry_address",
    "validate_digest",
    "validate_repository",
    "validate_tag",
]

# OCI distribution spec v1.1 grammar for repository names and tags.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# Only sha256 is supported end to end (CAS paths, verification); say so clearly.
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$")
MAX_REPOSITORY_LENGTH = 255
DEFAULT_TAG = "latest"

_SCHEMES = ("docker", "oci", "https", "http")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Docker Hub's public names are not where its API lives.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry.hub.docker.com"})
DOCKER_HUB_API_HOST = "registry-1.docker.io"


@dataclass(frozen=True)
class ImageRef:
    """One image in one registry; ``digest`` (if set) wins over ``tag``."""

    registry_host: str  # host[:port] as used in URLs ("[::1]:5000" for IPv6)
    scheme: str  # "https" or "http" (loopback only)
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if pinned, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or DEFAULT_TAG

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.registry_host}"

    def __str__(self) -> str:
        text = f"{self.registry_host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image_ref(fqdn: str, dpath: str, url: str) -> ImageRef:
    """Join datastore address, dpath and content-tree URL; ConfigError if unusable."""
    scheme, host, address_path = split_registry_address(fqdn)
    name, tag, digest = _split_reference(url)
    first, sep, rest = name.partition("/")
    if sep and first.lower() == host:
        name = rest  # a full reference pasted into the URL: the host is the datastore's
    parts = [p for p in (address_path, dpath.strip().strip("/"), name) if p]
    repository = "/".join(parts)
    if host == DOCKER_HUB_API_HOST and "/" not in repository:
        repository = f"library/{repository}"  # Docker Hub's official images
    validate_repository(repository)
    return ImageRef(host, scheme, repository, tag, digest)


def split_registry_address(fqdn: str) -> tuple[str, str, str]:
    """``(scheme, host[:port], path prefix)`` of a registry datastore address."""
    text = fqdn.strip()
    if not text:
        raise ConfigError("registry datastore address is empty")
    match = _SCHEME_RE.match(text)
    given_scheme = None
    if match:
        given_scheme = match.group(1).lower()
        if given_scheme not in _SCHEMES:
            raise ConfigError(
                f"unsupported scheme {given_scheme!r} for a container registry "
                "(use docker://HOST or oci://HOST)"
            )
        text = text[match.end() :]
    if "?" in text or "#" in text:
        raise ConfigError("registry address must not contain a query or fragment")
    netloc, _, path = text.partition("/")
    if "@" in netloc:
        # Never echo the address: it would contain the credentials.
        raise ConfigError("credentials in the registry address are not allowed; use apiKey/password")
    if not netloc:
        raise ConfigError("registry address has no host")
    import httpx  # its URL rules (IDNA) are the ones the registry client will use; imported when needed

    try:
        parsed = httpx.URL(f"http://{netloc}/")
        host = parsed.host  # decodes IDNA: raises ValueError (idna) for e.g. xn--ls8h
    except (httpx.InvalidURL, ValueError) as exc:
        raise ConfigError(f"invalid registry address {netloc!r}: {exc}") from exc
    if not host:
        raise ConfigError("registry address has no host")
    if host.lower() in _DOCKER_HUB_ALIASES and parsed.port is None:
        netloc = DOCKER_HUB_API_HOST
    loopback = is_loopback_host(host)
    if given_scheme == "http" and not loopback:
        raise ConfigError(
            f"plain http is only allowed for a loopback registry, not {host!r}; "
            "use https (docker://HOST)"
        )
    scheme = "http" if loopback and given_scheme != "https" else "https"
    path = path.strip("/")
    if path:
        for seg in path.split("/"):
            if not re.fullmatch(_COMPONENT, seg):
                raise ConfigError(f"registry address path {path!r} is not a valid repository prefix")
    return scheme, netloc.lower(), path


def validate_repository(name: str) -> str:
    if len(name) > MAX_REPOSITORY_LENGTH:
        raise ConfigError(
            f"repository name is {len(name)} characters; the limit is {MAX_REPOSITORY_LENGTH}"
        )
    if not _REPOSITORY_RE.match(name):
        raise ConfigError(
            f"invalid repository name {name!r}: use lowercase letters and digits, "
            "separated by '.', '_', '__' or '-', in '/'-separated components"
        )
    return name


def validate_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise ConfigError(
            f"invalid tag {tag!r}: at most 128 of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return tag


def validate_digest(digest: str) -> str:
    if DIGEST_RE.match(digest):
        return digest
    if _ANY_DIGEST_RE.match(digest) and not digest.startswith("sha256:"):
        raise ConfigError(f"unsupported digest algorithm in {digest!r}: only sha256 is supported")
    raise ConfigError(f"invalid digest {digest!r}: expected sha256: and 64 lowercase hex digits")


def _split_reference(url: str) -> tuple[str, str | None, str | None]:
    """``REPO[:TAG][@DIGEST]`` -> (repo, tag, digest); tag defaults to latest."""
    text = url.strip()
    if not text:
        raise ConfigError("container content tree has an empty URL (expected REPO:TAG)")
    if "://" in text:
        raise ConfigError(
            f"content tree URL {text!r} must be REPO:TAG or REPO@sha256:HEX, "
            "relative to the registry datastore"
        )
    name, at, digest = text.partition("@")
    digest_value = validate_digest(digest) if at else None
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], validate_tag(name[colon + 1 :])
    name = name.strip("/")
    if not name:
        raise ConfigError(f"content tree URL {text!r} has no repository name")
    if tag is None and digest_value is None:
        tag = DEFAULT_TAG
    return name, tag, digest_value
