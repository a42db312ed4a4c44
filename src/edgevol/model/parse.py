"""Turn an ``EdgeDevConfig`` into a :class:`DesiredState`, validating everything.

Validation is per object: a bad object is recorded in ``DesiredState.errors``
and left out, objects that depend on it are left out with an error that names
the cause, and everything else is applied. An id that any object failed on
(a duplicate, say) is left out entirely. Nothing here touches the disk.
"""

from __future__ import annotations

import dataclasses
import re
import uuid as uuidlib
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from edgevol.api.formats import BLOB_TREE
from edgevol.device.datastores.base import ConfigError
from edgevol.device.datastores.oci_refs import parse_image_ref, split_registry_address
from edgevol.model import proxyconfig as proxy_rules
from edgevol.model.desired import (
    ContentSignature,
    AppInstance,
    ContentTree,
    Datastore,
    DatastoreKind,
    DesiredState,
    EncryptedCredentials,
    ImageFormat,
    ObjectError,
    ObjectKind,
    ProxySettings,
    Settings,
    Volume,
    VolumeClone,
    VolumeOrigin,
    VolumeRef,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Wire enum numbers (org.lfedge.eve.config, plus edgevol's BLOB_TREE) mapped to what edgevol supports.
_FORMATS = {1: ImageFormat.RAW, 2: ImageFormat.QCOW, 3: ImageFormat.QCOW2, 4: ImageFormat.VHD, 5: ImageFormat.VMDK,
            6: ImageFormat.OVA, 7: ImageFormat.VHDX, 8: ImageFormat.CONTAINER, 9: ImageFormat.ISO,
            BLOB_TREE: ImageFormat.BLOB_TREE}
_FORMAT_NAMES = {0: "FmtUnknown", 1: "RAW", 2: "QCOW", 3: "QCOW2", 4: "VHD", 5: "VMDK", 6: "OVA",
                 7: "VHDX", 8: "CONTAINER", 9: "ISO", 10: "PVC", BLOB_TREE: "BLOB_TREE"}
_DS_KINDS = {1: DatastoreKind.HTTP, 2: DatastoreKind.HTTPS, 3: DatastoreKind.S3, 4: DatastoreKind.SFTP,
             5: DatastoreKind.CONTAINER_REGISTRY, 6: DatastoreKind.AZURE_BLOB, 7: DatastoreKind.GOOGLE_STORAGE}
_BLANK, _DOWNLOAD = 1, 2

MAX_REASONABLE_SIZE = 1 << 50  # 1 PiB: anything larger is a typo or an attack
MAX_SIGNATURE_BYTES = 4096  # an RSA-16384 signature is 2 KiB; base64 of an ECDSA one far less


class Invalid(ValueError):
    """A single field failed validation; the message says which and why."""


def canonical_uuid(value: str, what: str = "uuid") -> str:
    """Return the canonical lowercase 8-4-4-4-12 form, or raise :class:`Invalid`."""
    if not isinstance(value, str) or len(value) != 36:
        raise Invalid(f"{what} {value!r} is not a UUID (want 8-4-4-4-12 hex)")
    try:
        parsed = uuidlib.UUID(value)
    except ValueError:
        raise Invalid(f"{what} {value!r} is not a UUID (want 8-4-4-4-12 hex)") from None
    if str(parsed) != value.lower():
        raise Invalid(f"{what} {value!r} is not a UUID (want 8-4-4-4-12 hex)")
    return str(parsed)


def canonical_sha256(value: str) -> str | None:
    """Lowercase hex digest, ``None`` for empty; a ``sha256:`` prefix is tolerated."""
    if not value:
        return None
    v = value.strip().lower().removeprefix("sha256:")
    if not _SHA256.match(v):
        raise Invalid(f"sha256 {value!r} is not 64 hexadecimal characters")
    return v


def check_size(value: int, what: str) -> int:
    if value < 0:
        raise Invalid(f"{what} {value} is negative")
    if value > MAX_REASONABLE_SIZE:
        raise Invalid(f"{what} {value} is larger than 1 PiB")
    return value


def check_relative_path(value: str, what: str) -> str:
    """Refuse anything that could leave the datastore's path once joined to it."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise Invalid(f"{what} {value!r} contains control characters")
    if "\\" in value:
        raise Invalid(f"{what} {value!r} contains a backslash")
    if "://" in value or value.startswith("//"):
        raise Invalid(f"{what} {value!r} is an absolute URL, not a path inside the datastore")
    decoded = value
    for _ in range(3):  # catch %2e%2e and double encoding
        decoded = unquote(decoded)
    if "\\" in decoded or "\x00" in decoded:
        raise Invalid(f"{what} {value!r} decodes to a backslash or NUL")
    # Datastores take the suffix literally ('?' and '#' are percent-encoded, never
    # a query), so a '..' after them is as real as one before.
    segments = decoded.split("/")
    if any(seg == ".." for seg in segments):
        raise Invalid(f"{what} {value!r} tries to leave the datastore path with '..'")
    if any(seg == "." for seg in segments):
        raise Invalid(f"{what} {value!r} has a '.' segment, which datastores refuse")
    return value


# EVE's global config items (pkg/pillar/types/global.go) for behaviours edgevol has: key -> (Settings
# field, EVE's min, EVE's max), all whole seconds as EVE's int items are. Each has an edgevol.* alias below.
_EVE_INT_ITEMS: dict[str, tuple[str, int, int]] = {
    "timer.defer.content.delete": ("gc_delay_seconds", 0, 24 * 3600),
    "timer.download.retry": ("slow_retry_seconds", 60, 0xFFFFFFFF),
    "timer.download.stalled": ("download_read_timeout_seconds", 20, 0xFFFFFFFF),
    "timer.metric.diskscan.interval": ("disk_scan_interval_seconds", 5, 3600),
}
_EVE_BOOL_ITEMS = {"storage.apps.ignore.disk.check": "ignore_disk_check"}
_EDGEVOL_BOOL_ITEMS = {"edgevol.disk.thin.overcommit": "thin_overcommit",
                       "edgevol.content.signature.required": "require_signatures"}
# What Go's strconv.ParseBool accepts, as EVE parses a bool item.
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
             "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_DIGITS = re.compile(r"^[0-9]+$")
# Download caps (bytes per second, 0: none). Whole numbers only: the unit is in the key, and a "10M" could be
# read as megabits (how link speeds are quoted) as well as mebibytes.
# Download caps (bytes per second, 0: none): the device's, and each datastore's default -> Settings field.
_CAPS = {"edgevol.download.max.bytes.per.second": "download_bytes_per_second",
         "edgevol.download.datastore.max.bytes.per.second": "datastore_bytes_per_second"}
_MAX_CAP = 1 << 40


def _parse_eve_item(key: str, raw: str, errors: list[ObjectError]) -> tuple[str, Any] | None:
    """(Settings field, value) of one of EVE's items, or None with an error.

    As EVE's ``ConfigItemSpec.parseValue``: an int item is a base-10 uint32
    and a value outside min..max is an error, never clamped; the item then
    keeps its default (EVE keeps the previous config's value when it had one;
    edgevol parses each config whole and has none).
    """
    if key in _EVE_BOOL_ITEMS:
        if raw in _GO_BOOLS:
            return _EVE_BOOL_ITEMS[key], _GO_BOOLS[raw]
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want true or false"))
        return None
    attr, lo, hi = _EVE_INT_ITEMS[key]
    if not _DIGITS.match(raw) or len(raw) > 20 or int(raw) > 0xFFFFFFFF:  # int() refuses 4,300 digits and more
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: not a whole number of seconds"))
        return None
    if not lo <= int(raw) <= hi:
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want {lo}..{hi}; "
                                  "the default applies"))
        return None
    return attr, int(raw)


def _parse_settings(cfg: Any, errors: list[ObjectError]) -> Settings:
    """The device settings; an ``edgevol.*`` key wins over EVE's key for the same setting.

    An EVE controller sends its global items to every device, while an
    ``edgevol.*`` key can only have been set for edgevol, on purpose; and it
    has edgevol's finer unit and range (fractions of a second, a longer GC delay).
    """
    values: dict[str, Any] = {}
    eve_values: dict[str, Any] = {}
    spec: dict[str, tuple[str, type, float, float]] = {
        "edgevol.download.max.attempts": ("download_max_attempts", int, 1, 100),
        "edgevol.download.retry.base.seconds": ("retry_base_seconds", float, 0.0, 3600),
        "edgevol.download.retry.cap.seconds": ("retry_cap_seconds", float, 0.0, 86400),
        "edgevol.download.slow.retry.seconds": ("slow_retry_seconds", float, 0.0, 86400 * 7),
        "edgevol.download.parallel": ("parallel_downloads", int, 1, 64),
        "edgevol.download.read.timeout.seconds": ("download_read_timeout_seconds", float, 0.1, 3600),
        "edgevol.gc.delay.seconds": ("gc_delay_seconds", float, 0.0, 86400 * 30),
        "edgevol.disk.reserve.bytes": ("disk_reserve_bytes", int, 0, 1 << 50),
        "edgevol.disk.scan.interval.seconds": ("disk_scan_interval_seconds", float, 0.0, 3600),
        "edgevol.download.datastore.parallel": ("parallel_per_datastore", int, 0, 64),
    }
    per_store: dict[str, dict[str, Any]] = {}  # Settings field -> {datastore uuid: value}
    proxy_items: dict[str, str] = {}
    for item in cfg.configItems:
        key, raw = item.key, item.value
        if key in _PROXY_ITEMS:
            proxy_items[key] = raw
            continue
        if _PER_DATASTORE.match(key):
            own = _per_datastore(key, raw, errors)
            if own is not None:
                per_store.setdefault(own[0], {})[own[1]] = own[2]
            continue
        if key in _EVE_INT_ITEMS or key in _EVE_BOOL_ITEMS:
            parsed = _parse_eve_item(key, raw, errors)
            if parsed is not None:
                eve_values[parsed[0]] = parsed[1]
            continue
        if key in _EDGEVOL_BOOL_ITEMS:
            if raw in ("true", "false"):
                values[_EDGEVOL_BOOL_ITEMS[key]] = raw == "true"
            else:
                errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want true or false"))
            continue
        if key == "edgevol.volume.blank.format":
            if raw in ("qcow2", "raw"):
                values["blank_format"] = ImageFormat(raw)
            else:
                errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want qcow2 or raw"))
            continue
        if key == "edgevol.volume.clone":
            if raw in ("backing", "copy"):
                values["volume_clone"] = VolumeClone(raw)
            else:
                errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want backing or copy"))
            continue
        if key in _CAPS:
            value = _cap(key, raw, errors)
            if value is not None:
                values[_CAPS[key]] = value
            continue
        if key not in spec:
            continue  # other config items belong to other parts of the device
        attr, typ, lo, hi = spec[key]
        val = _bounded(key, raw, typ, lo, hi, errors)
        if val is not None:
            values[attr] = val
    for attr, by_uuid in per_store.items():
        values[attr] = tuple(sorted(by_uuid.items()))
    # the config items win; a network's entProxy counts only when none is set (even a malformed one)
    proxy = _parse_proxy_items(proxy_items, errors) if proxy_items else _ent_proxy(cfg, errors)
    if proxy is not None:
        values["proxy"] = proxy
    return Settings(**{**eve_values, **values})


# A datastore's own items, edgevol.download.datastore.<datastore uuid>.<name>: name -> Settings field.
_PER_DATASTORE = re.compile(r"^edgevol\.download\.datastore\.(.+)\.(parallel|max\.bytes\.per\.second)$")
_PER_DATASTORE_FIELDS = {"parallel": "parallel_by_datastore", "max.bytes.per.second": "datastore_caps"}


def _per_datastore(key: str, raw: str, errors: list[ObjectError]) -> tuple[str, str, int] | None:
    """(Settings field, datastore uuid, value) of one datastore's own item, or None with a config error."""
    match = _PER_DATASTORE.match(key)
    assert match is not None
    try:
        uuid = canonical_uuid(match.group(1), "datastore id")
    except Invalid as exc:
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}: {exc}"))
        return None
    name = match.group(2)
    value = _bounded(key, raw, int, 0, 64, errors) if name == "parallel" else _cap(key, raw, errors)
    return None if value is None else (_PER_DATASTORE_FIELDS[name], uuid, value)


def _bounded(key: str, raw: str, typ: type, lo: float, hi: float, errors: list[ObjectError]) -> Any:
    """``raw`` as ``typ`` within lo..hi, or None with a config error saying what was wanted."""
    try:
        val = typ(raw)
    except ValueError:
        kind = "a whole number" if typ is int else "a number"
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: not {kind}"))
        return None
    if not lo <= val <= hi:
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want {lo}..{hi}"))
        return None
    return val


def _cap(key: str, raw: str, errors: list[ObjectError]) -> int | None:
    """A download cap in bytes per second (0: none), or None with a config error."""
    if not _DIGITS.match(raw) or len(raw) > 20 or int(raw) > _MAX_CAP:  # int() refuses 4,300 digits and more
        errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{key}={raw!r}: want a whole number of bytes "
                                  f"per second, 0..{_MAX_CAP} (0: no cap)"))
        return None
    return int(raw)


# edgevol.download.proxy.* -> ProxySettings field, and the parser of its value.
_PROXY_ITEMS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "edgevol.download.proxy.http": ("http_proxy", proxy_rules.parse_proxy_url),
    "edgevol.download.proxy.https": ("https_proxy", proxy_rules.parse_proxy_url),
    "edgevol.download.proxy.exceptions": ("no_proxy", proxy_rules.parse_no_proxy),
    "edgevol.download.proxy.ca.pem": ("ca_pems", proxy_rules.parse_ca_pems),
}


def _parse_proxy_items(items: dict[str, str], errors: list[ObjectError]) -> ProxySettings | None:
    """The download proxy from its config items; None when none is set or one is malformed (each such item is
    an error: a half-applied proxy setting could send traffic where the operator did not mean it to go)."""
    values: dict[str, Any] = {}
    for key, raw in items.items():
        attr, parse = _PROXY_ITEMS[key]
        try:
            values[attr] = parse(raw, key) if raw.strip() else ("" if attr.endswith("proxy") else ())
        except proxy_rules.ProxyConfigError as exc:
            errors.append(ObjectError(ObjectKind.CONFIG_ITEM, key, f"{exc}; no download proxy applies"))
    if len(values) < len(items):
        return None
    return ProxySettings(**values) if values else None


_PROXY_HTTP, _PROXY_HTTPS = 0, 1  # org.lfedge.eve.common.proxyProto


def _ent_proxy(cfg: Any, errors: list[ObjectError]) -> ProxySettings | None:
    """The enterprise proxy of the first network whose ``entProxy`` names a proxy or a proxy CA.

    EVE keeps one per uplink port; edgevol has no ports, so one for all. As EVE reads it: a PROXY_HTTP
    server is for http:// targets and a PROXY_HTTPS one for https:// ones, each dialled at ``server:port``
    (http:// unless ``server`` names a scheme); ``exceptions`` is the no-proxy list and ``proxyCertPEM``
    the CAs of a TLS-intercepting proxy. SOCKS, FTP, PAC files and WPAD are not supported (an error says so).
    """
    for net in cfg.networks:
        if not net.HasField("entProxy"):
            continue
        ent, where = net.entProxy, f"network {net.id or '(no id)'} entProxy"
        try:
            urls = {_PROXY_HTTP: "", _PROXY_HTTPS: ""}
            for server in ent.proxies:
                if server.proto not in urls:
                    errors.append(ObjectError(ObjectKind.CONFIG, net.id, f"{where}: proxy type {server.proto} "
                                              "is not supported (only PROXY_HTTP and PROXY_HTTPS); it is ignored"))
                    continue
                address = f"{server.server}:{server.port}" if server.port else server.server
                urls[server.proto] = proxy_rules.parse_proxy_url(address, f"{where} proxy server")
            if ent.pacfile or ent.networkProxyEnable:
                errors.append(ObjectError(ObjectKind.CONFIG, net.id, f"{where}: PAC files and WPAD are not "
                                          "supported; only its explicit proxies apply"))
            pems = tuple(c for pem in ent.proxyCertPEM for c in proxy_rules.parse_ca_pems(pem, f"{where} proxyCertPEM"))
            if not (urls[_PROXY_HTTP] or urls[_PROXY_HTTPS] or pems):
                continue
            no_proxy = proxy_rules.parse_no_proxy(ent.exceptions, f"{where} exceptions")
        except proxy_rules.ProxyConfigError as exc:
            errors.append(ObjectError(ObjectKind.CONFIG, net.id, f"{exc}; no download proxy applies"))
            return None
        return ProxySettings(urls[_PROXY_HTTP], urls[_PROXY_HTTPS], no_proxy, pems)
    return None


def _cipher_contexts(cfg: Any) -> dict[str, bytes]:
    """``cipherContexts`` by id, serialized; as EVE, a context without an id is ignored.

    (EVE pkg/pillar/cmd/zedagent/handlecipherconfig.go:82-95.)
    """
    return {c.contextId: c.SerializeToString(deterministic=True) for c in cfg.cipherContexts if c.contextId}


def _encrypted_credentials(ds: Any, contexts: dict[str, bytes]) -> EncryptedCredentials | None:
    """The datastore's cipherData with its context, or None when there is none to use.

    As EVE: a block without encrypted data or without a context id is not
    treated as encrypted, so the clear apiKey/password apply
    (handlecipherconfig.go:119-126); a context id the config lacks is kept
    and fails when the device decrypts (handlecipherconfig.go:140-143).
    """
    if not ds.HasField("cipherData") or not ds.cipherData.cipherData or not ds.cipherData.cipherContextId:
        return None
    return EncryptedCredentials(block=ds.cipherData.SerializeToString(deterministic=True),
                                context=contexts.get(ds.cipherData.cipherContextId))


# Where each object store names its bucket (or container) in dpath.
_BUCKETED = {DatastoreKind.S3: "an S3 datastore names its bucket",
             DatastoreKind.AZURE_BLOB: "an Azure Blob datastore names its container",
             DatastoreKind.GOOGLE_STORAGE: "a Google Storage datastore names its bucket"}


def _sftp_host(fqdn: str) -> str | None:
    """The host of an SFTP ``host[:port]`` or ``sftp://host[:port]`` (EVE takes both: zedUpload
    sftputil/sftp.go:50-61), or None for another scheme, a path, user info or a port that is not a number."""
    try:
        parts = urlsplit(fqdn if fqdn.lower().startswith("sftp://") else f"sftp://{fqdn}")
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    if parts.path.strip("/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return parts.hostname


def _parse_datastore(ds: Any, contexts: dict[str, bytes] | None = None) -> Datastore:
    ds_id = canonical_uuid(ds.id, "datastore id")
    kind = _DS_KINDS.get(ds.dType)
    if kind is None:
        raise Invalid(f"datastore type {ds.dType} is unknown")
    fqdn = ds.fqdn.strip()
    if not fqdn and kind not in (DatastoreKind.S3, DatastoreKind.GOOGLE_STORAGE):  # empty: AWS or Google itself
        raise Invalid("fqdn is empty")
    if kind in (DatastoreKind.HTTP, DatastoreKind.HTTPS):
        url = fqdn if "://" in fqdn else f"{kind.value}://{fqdn}"
        try:  # urlsplit raises ValueError on a broken IPv6 literal or NFKC-unsafe host
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError as exc:
            raise Invalid(f"fqdn {fqdn!r} is not an http(s) host: {exc}") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise Invalid(f"fqdn {fqdn!r} is not an http(s) host")
        if parts.query or parts.fragment or parts.username:
            raise Invalid(f"fqdn {fqdn!r} must not carry credentials, a query or a fragment")
    elif kind is DatastoreKind.CONTAINER_REGISTRY:
        try:
            split_registry_address(fqdn)
        except ConfigError as exc:
            raise Invalid(str(exc)) from None
    elif kind in _BUCKETED and not ds.dpath.strip("/"):
        raise Invalid(f"{_BUCKETED[kind]} in dpath")
    elif kind is DatastoreKind.SFTP and not _sftp_host(fqdn):
        raise Invalid(f"fqdn {fqdn!r} is not an SFTP address: host[:port] or sftp://host[:port], without a path")
    if ds.dpath:
        check_relative_path(ds.dpath, "dpath")
    return Datastore(
        uuid=ds_id, kind=kind, fqdn=fqdn, dpath=ds.dpath, api_key=ds.apiKey, password=ds.password,
        ca_pems=tuple(bytes(p) for p in ds.dsCertPEM), region=ds.region,
        encrypted=_encrypted_credentials(ds, contexts or {}),
    )


def _parse_signature(siginfo: Any, required: bool) -> ContentSignature | None:
    """``siginfo`` as a :class:`ContentSignature`; None when absent (an error if signatures are required)."""
    if not (siginfo.signercerturl or siginfo.intercertsurl or siginfo.signature):
        if required:
            raise Invalid("has no siginfo, and edgevol.content.signature.required is true")
        return None
    if not siginfo.signercerturl or not siginfo.signature:
        raise Invalid("siginfo needs both signercerturl and signature")
    check_relative_path(siginfo.signercerturl, "siginfo.signercerturl")
    if siginfo.intercertsurl:
        check_relative_path(siginfo.intercertsurl, "siginfo.intercertsurl")
    if len(siginfo.signature) > MAX_SIGNATURE_BYTES:
        raise Invalid(f"siginfo.signature is {len(siginfo.signature)} bytes; more than any signature")
    return ContentSignature(siginfo.signercerturl, siginfo.intercertsurl, bytes(siginfo.signature))


def _parse_content_tree(ct: Any, datastores: dict[str, Datastore], bad_ds: dict[str, str],
                        require_signature: bool = False) -> ContentTree:
    ct_id = canonical_uuid(ct.uuid, "content tree uuid")
    # ds_ids_list wins; dsId is for controllers that send no list (EVE zedagent/handlecontent.go:39-48)
    ds_ids = list(ct.ds_ids_list) or ([ct.dsId] if ct.dsId else [])
    if not ds_ids:
        raise Invalid("names no datastore (dsId is empty)")
    field = "ds_ids_list entry" if ct.ds_ids_list else "dsId"
    ordered: list[str] = []
    for raw_id in ds_ids:  # every one must be usable, as EVE's downloader.go:457-465 needs them all
        one = canonical_uuid(raw_id, field)
        if one in bad_ds:
            raise Invalid(f"datastore {one} is invalid: {bad_ds[one]}")
        if one not in datastores:
            raise Invalid(f"datastore {one} is not in the config")
        if one not in ordered:
            ordered.append(one)
    ds_id = ordered[0]
    fmt = _FORMATS.get(ct.iformat)
    if fmt is None:
        raise Invalid(f"format {_FORMAT_NAMES.get(ct.iformat, ct.iformat)} is not supported "
                      f"(supported: {', '.join(_FORMAT_NAMES[n] for n in sorted(_FORMATS))})")
    if not ct.URL:
        raise Invalid("URL is empty")
    check_relative_path(ct.URL, "URL")
    sha = canonical_sha256(ct.sha256)
    ds = datastores[ds_id]
    for other_id in ordered[1:]:  # a fallback must serve the same bytes the same way
        other = datastores[other_id]
        if (other.kind is DatastoreKind.CONTAINER_REGISTRY) != (ds.kind is DatastoreKind.CONTAINER_REGISTRY):
            raise Invalid(f"ds_ids_list mixes a container registry with another kind of datastore ({ds_id} is "
                          f"{ds.kind.value}, {other_id} is {other.kind.value})")
    if fmt is ImageFormat.BLOB_TREE and ds.kind is not DatastoreKind.CONTAINER_REGISTRY:
        if ds.kind not in (DatastoreKind.HTTP, DatastoreKind.HTTPS):
            raise Invalid(f"BLOB_TREE content comes from a container registry or an HTTP(S) datastore, "
                          f"not {ds.kind.value}")
        if sha is None:
            raise Invalid("sha256 (the artifact manifest's digest) is required for BLOB_TREE content from an "
                          "HTTP datastore: it names the manifest in the OCI layout at URL")
    elif fmt.manifested:
        if ds.kind is not DatastoreKind.CONTAINER_REGISTRY:
            raise Invalid(f"CONTAINER content needs a container registry datastore, not {ds.kind.value}")
        try:
            ref = parse_image_ref(ds.fqdn, ds.dpath, ct.URL)
        except ConfigError as exc:
            raise Invalid(f"URL {ct.URL!r}: {exc}") from None
        if ref.digest and sha and ref.digest != f"sha256:{sha}":
            raise Invalid(f"URL {ct.URL!r} pins {ref.digest} but sha256 says sha256:{sha}")
    elif sha is None:
        raise Invalid(f"sha256 is required for {fmt.name} content (nothing to verify the download against)")
    elif ds.kind is DatastoreKind.CONTAINER_REGISTRY:
        raise Invalid(f"{fmt.name} content cannot come from a container registry datastore")
    max_size = check_size(ct.maxSizeBytes, "maxSizeBytes") or None
    signature = _parse_signature(ct.siginfo, require_signature)
    if signature is not None and ds.kind is DatastoreKind.CONTAINER_REGISTRY:
        raise Invalid("siginfo: the signer's certificates are fetched from the content tree's datastore, "
                      "and a container registry does not serve them")
    return ContentTree(
        uuid=ct_id, datastore_id=ds_id, url=ct.URL, format=fmt, sha256=sha, max_size_bytes=max_size,
        display_name=ct.displayName, generation=check_size(ct.generation_count, "generation_count"),
        signature=signature, fallback_datastore_ids=tuple(ordered[1:]),
    )


_VAP_NONE, _VAP_9P = 0, 1  # org.lfedge.eve.config.VolumeAccessProtocols


def _parse_volume(v: Any, trees: dict[str, ContentTree], bad_trees: dict[str, str]) -> Volume:
    vol_id = canonical_uuid(v.uuid, "volume uuid")
    generation = check_size(v.generationCount, "generationCount")
    size = check_size(v.maxsizebytes, "maxsizebytes")
    if v.origin.type == _BLANK:
        if size == 0:
            # EVE's words first (pkg/pillar/cmd/volumemgr/updatestatus.go:573-576), then why
            raise Invalid("Cannot create volume with 0 size: a BLANK volume needs maxsizebytes > 0")
        origin, tree_id = VolumeOrigin.BLANK, None
    elif v.origin.type == _DOWNLOAD:
        origin = VolumeOrigin.DOWNLOAD
        tree_id = canonical_uuid(v.origin.downloadContentTreeID, "downloadContentTreeID")
        if tree_id in bad_trees:
            raise Invalid(f"content tree {tree_id} is invalid: {bad_trees[tree_id]}")
        if tree_id not in trees:
            raise Invalid(f"content tree {tree_id} is not in the config")
    else:
        raise Invalid(f"origin type {v.origin.type} is neither BLANK nor DOWNLOAD")
    protocols = []
    for proto in v.protocols:
        if proto == _VAP_9P:
            protocols.append("9p")
        elif proto != _VAP_NONE:
            raise Invalid(f"access protocol {proto} is not one this device can offer (VAP_NONE or VAP_9P)")
    return Volume(uuid=vol_id, generation=generation, origin=origin, content_tree_id=tree_id,
                  max_size_bytes=size, readonly=v.readonly, display_name=v.displayName,
                  protocols=tuple(dict.fromkeys(protocols)))


def _parse_app(app: Any, volumes: dict[str, Volume]) -> AppInstance:
    app_id = canonical_uuid(app.uuidandversion.uuid, "app instance uuid")
    refs = []
    for ref in app.volumeRefList:
        ref_id = canonical_uuid(ref.uuid, "volumeRef uuid")
        if ref_id not in volumes:
            raise Invalid(f"volumeRef {ref_id} names a volume that is not in the config or is invalid")
        refs.append(VolumeRef(ref_id, check_size(ref.generationCount, "volumeRef generationCount")))
    return AppInstance(uuid=app_id, display_name=app.displayname, volume_refs=tuple(refs),
                       purge_counter=app.purge.counter, activate=app.activate)


def _id_or_raw(value: str) -> str:
    try:
        return canonical_uuid(value)
    except Invalid:
        return value


def _drop_refused(found: dict[str, Any], errors: list[ObjectError], kind: ObjectKind) -> None:
    """Leave out every id an error was recorded for: with a duplicate, neither copy can be trusted.

    Keeping one would make the same id both wanted and invalid downstream.
    """
    for e in errors:
        if e.kind is kind:
            found.pop(e.object_id, None)


def _collect(items: Any, parse: Callable[[Any], Any], kind: ObjectKind, what: str, raw_id: Callable[[Any], str],
             describe: Callable[[Any], dict[str, Any]], errors: list[ObjectError]) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse one section object by object: the valid ones by id, and why each refused id was refused."""
    found: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for item in items:
        try:
            obj = parse(item)
            if obj.uuid in found:
                raise Invalid(f"duplicate {what}")
            found[obj.uuid] = obj
        except Invalid as exc:
            object_id = _id_or_raw(raw_id(item))
            refused[object_id] = str(exc)
            errors.append(ObjectError(kind, object_id, str(exc), **describe(item)))
    _drop_refused(found, errors, kind)
    return found, refused


def parse_config(cfg: Any) -> DesiredState:
    """Validate ``cfg`` (an ``EdgeDevConfig``) object by object."""
    errors: list[ObjectError] = []
    state = DesiredState(device_id=_id_or_raw(cfg.id.uuid) if cfg.id.uuid else "")
    state.settings = _parse_settings(cfg, errors)
    contexts = _cipher_contexts(cfg)
    state.datastores, bad_ds = _collect(
        cfg.datastores, lambda ds: _parse_datastore(ds, contexts), ObjectKind.DATASTORE, "datastore id",
        lambda ds: ds.id, lambda ds: {}, errors)
    state.content_trees, bad_trees = _collect(
        cfg.contentInfo, lambda ct: _parse_content_tree(ct, state.datastores, bad_ds,
                                                        state.settings.require_signatures), ObjectKind.CONTENT_TREE,
        "content tree uuid", lambda ct: ct.uuid,
        lambda ct: {"name": ct.displayName, "generation": max(ct.generation_count, 0)}, errors)
    state.volumes, _ = _collect(
        cfg.volumes, lambda v: _parse_volume(v, state.content_trees, bad_trees), ObjectKind.VOLUME,
        "volume uuid", lambda v: v.uuid,
        lambda v: {"name": v.displayName, "generation": max(v.generationCount, 0)}, errors)
    state.apps, _ = _collect(
        cfg.apps, lambda app: _parse_app(app, state.volumes), ObjectKind.APP, "app instance uuid",
        lambda app: app.uuidandversion.uuid, lambda app: {"name": app.displayname}, errors)
    state.errors = errors
    # Imported here because legacy.py builds on this module's validators.
    from edgevol.model.legacy import add_implicit_volumes
    add_implicit_volumes(cfg.apps, state, bad_ds, bad_trees)
    _iso_read_only(state)
    return state


def _iso_read_only(state: DesiredState) -> None:
    """A volume made from an ISO is read-only whatever the config says: EVE attaches it as a CD-ROM
    (pkg/pillar/cmd/domainmgr/domainmgr.go:2484-2488) with readonly=on (pkg/pillar/hypervisor/kvm.go:384-390)."""
    for key, v in state.volumes.items():
        tree = state.content_trees.get(v.content_tree_id or "")
        if tree is not None and tree.format is ImageFormat.ISO and not v.readonly:
            state.volumes[key] = dataclasses.replace(v, readonly=True)
