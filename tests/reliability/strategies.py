"""Hypothesis strategies for the hostile-input suite: configs, config bytes, tar layers.

Why a module of its own: the same generators feed the parser, the CLI, the
agent and the layer unpacker, so the test file can stay about properties.
A generated config comes with what a test needs to judge the parser without
re-implementing it (:class:`Plan`): which objects were planted broken on
purpose (each must get its own error), and which valid objects a planted
duplicate or conflicting drive legitimately takes down with it (all others
must come out exactly as they do without the hostile objects).

Every datastore address that can pass validation points at ``host`` (a
loopback port the caller picks, normally one nothing listens on), so an agent
fed these configs never reaches beyond 127.0.0.1; ``wild_hosts=True`` adds
arbitrary host names for tests that only parse.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import io
import json
import tarfile
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from edgevol.api import messages as m
from edgevol.model.desired import ObjectKind

K = ObjectKind
Key = tuple[ObjectKind, str]

MiB = 1 << 20
PIB = 1 << 50
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
INT32_MAX = 2**31 - 1

DS_HTTP, DS_HTTPS, DS_REGISTRY = 1, 2, 5
DS_KNOWN_UNSUPPORTED = (3, 4, 6, 7)  # S3, SFTP, Azure, GCS: parsed, not fetched
FMT_RAW, FMT_QCOW2, FMT_CONTAINER = 1, 3, 8
FMT_DISK = (1, 2, 3, 4, 5, 6, 7, 9)  # RAW, QCOW, QCOW2, VHD, VMDK, OVA, VHDX, ISO: disk images, need a sha256
FMT_UNSUPPORTED = (0, 10)
ORIGIN_BLANK, ORIGIN_DOWNLOAD = 1, 2
DRIVE_HDD, DRIVE_HDD_EMPTY = 2, 4
SETTING_KEYS = (
    "edgevol.download.max.attempts", "edgevol.download.retry.base.seconds", "edgevol.download.retry.cap.seconds",
    "edgevol.download.slow.retry.seconds", "edgevol.download.parallel", "edgevol.gc.delay.seconds",
    "edgevol.disk.reserve.bytes",
)
FLAG_KEYS = {"edgevol.disk.thin.overcommit": ("true", "false"), "edgevol.volume.blank.format": ("qcow2", "raw")}


# -- hostile text -----------------------------------------------------------------

RICH_MARKUP = ("[/]", "[bold]x", "[/x]", "[link=file:///etc/passwd]x[/link]", "[red", "\\[x]")
# check_relative_path refuses each of these (so a URL or dpath made of one must fail).
BAD_PATHS = ("..", "../..", "a/../../b", "%2e%2e/x", "%252e%252e/x", "..%2fx", "a\\b", "a%5cb",
             "//evil.example/x", "http://evil.example/x", "./x", "a/./b", "x\x00y", "x\ny", "x\x7fy")
ODD_PATHS = ("/etc/passwd", "?x", "#x", "~", " ", "a//b", "%", "%zz", "\u202eexe.txt", "a:b", ";x")
_CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.just("\x7f")
_UNITS = ("a", "é", "/", "../", "%2e", "\u202e", "\U0001f4a9", "[/]", "\x01")


@functools.cache  # built once: hypothesis pays for every new strategy object
def long_text() -> st.SearchStrategy[str]:
    """Strings from 256 to 70 000 characters (built by repetition: cheap to draw)."""
    return st.builds(lambda unit, n: unit * n, st.sampled_from(_UNITS), st.integers(256, 70_000))


@functools.cache
def hostile_text(max_size: int = 24) -> st.SearchStrategy[str]:
    """Empty, unicode, control characters, rich markup, traversal and very long strings."""
    return st.one_of(
        st.just(""),
        st.text(max_size=max_size),
        st.text(alphabet=_CONTROL | st.characters(codec="utf-8"), min_size=1, max_size=max_size),
        st.sampled_from(BAD_PATHS + ODD_PATHS),
        st.sampled_from(RICH_MARKUP),  # its own branch: tables render names, ids and messages
        long_text(),
    )


@functools.cache
def _sha() -> st.SearchStrategy[str]:
    return st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())


@functools.cache
def invalid_id() -> st.SearchStrategy[str]:
    """Ids canonical_uuid must refuse."""
    return st.one_of(
        hostile_text().filter(lambda s: not _is_canonical_after_lower(s)),
        st.sampled_from(RICH_MARKUP),
        st.uuids().map(lambda u: u.hex),                      # no dashes
        st.uuids().map(lambda u: "{" + str(u) + "}"),         # braces
        st.uuids().map(lambda u: str(u)[:-1] + "g"),          # not hex
        st.uuids().map(lambda u: f" {str(u)[1:]}"),           # a space instead of a digit
        st.uuids().map(lambda u: "urn:uuid:" + str(u)),
    )


def _is_canonical_after_lower(s: str) -> bool:
    try:
        return len(s) == 36 and str(uuidlib.UUID(s)) == s.lower()
    except ValueError:
        return False


def canon(raw: str) -> str:
    """The id the parser files an object (or its error) under: canonical UUID, else the raw text."""
    return raw.lower() if _is_canonical_after_lower(raw) else raw


# -- plans --------------------------------------------------------------------------


@dataclass
class Plan:
    """A config and what the parser must make of it."""

    cfg: m.EdgeDevConfig
    # The valid base alone, before anything was planted.
    base_cfg: m.EdgeDevConfig = field(default_factory=m.EdgeDevConfig)
    # Every object in the config, in order: (kind, canonical-or-raw id).
    objects: list[Key] = field(default_factory=list)
    # Objects of the valid base config (apps included), whose parse must not change...
    base: set[Key] = field(default_factory=set)
    # ...except these, which a planted duplicate or conflicting drive may take down (with dependants).
    tainted: set[Key] = field(default_factory=set)
    # Planted objects that must each end with an ObjectError of their own.
    must_fail: set[Key] = field(default_factory=set)
    # Planted config items with a value that must be refused.
    bad_items: set[str] = field(default_factory=set)
    # base object -> base objects that fall with it
    dependants: dict[Key, set[Key]] = field(default_factory=dict)
    # base legacy apps by the image UUIDs of their drives (drives the config has no content tree for)
    implicit_images: dict[str, set[str]] = field(default_factory=dict)
    ds_kind: dict[str, int] = field(default_factory=dict)
    # planted objects as written (kind, raw id), for duplicates and references
    planted: list[Key] = field(default_factory=list)
    # drives-only planted apps that describe a base legacy app's image differently: (app key, image ids)
    conflicts: list[tuple[Key, list[str]]] = field(default_factory=list)

    def base_ids(self, kind: ObjectKind) -> list[str]:
        return sorted(i for k, i in self.base if k is kind)

    def depend(self, on: Key, who: Key) -> None:
        self.dependants.setdefault(on, set()).add(who)

    def taint(self, key: Key) -> None:
        """``key`` and everything that depends on it fall."""
        todo = [key]
        while todo:
            k = todo.pop()
            if k in self.tainted or k not in self.base:
                continue
            self.tainted.add(k)
            todo.extend(self.dependants.get(k, ()))


@functools.cache
def _fqdn_valid(kind: int, host: str) -> st.SearchStrategy[str]:
    if kind == DS_REGISTRY:
        return st.sampled_from([f"docker://{host}", f"oci://{host}", host, f"docker://{host}/prefix"])
    return st.sampled_from([f"http://{host}", f"https://{host}", host, f"http://{host}/base/dir", f" {host} "])


@functools.cache
def _dpath_valid() -> st.SearchStrategy[str]:
    return st.sampled_from(["", "images", "a/b", "v1/"])


@functools.cache
def _path_valid() -> st.SearchStrategy[str]:
    return st.sampled_from(["disk.qcow2", "images/disk.raw", "a/b/c.img", "x%20y.img", "ümlaut.qcow2"])


@functools.cache
def _repo_valid() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["app", "library/alpine:3", "a/b/c:v1.2", "app:latest"]),
        _sha().map(lambda h: f"app@sha256:{h}"),
    )


@st.composite
def valid_base(draw: st.DrawFn, host: str) -> Plan:
    """A config every object of which is valid: datastores, trees, volumes, apps, legacy drives."""
    cfg = m.EdgeDevConfig()
    cfg.id.uuid = str(draw(st.uuids()))
    plan = Plan(cfg)

    def add(kind: ObjectKind, ident: str) -> None:
        plan.objects.append((kind, ident))
        plan.base.add((kind, ident))

    http = []
    for _ in range(draw(st.integers(1, 2))):
        ds_id, kind = str(draw(st.uuids())), draw(st.sampled_from([DS_HTTP, DS_HTTPS]))
        cfg.datastores.add(id=ds_id, dType=kind, fqdn=draw(_fqdn_valid(kind, host)), dpath=draw(_dpath_valid()))
        add(K.DATASTORE, ds_id)
        plan.ds_kind[ds_id] = kind
        http.append(ds_id)
    registries = []
    if draw(st.booleans()):
        ds_id = str(draw(st.uuids()))
        cfg.datastores.add(id=ds_id, dType=DS_REGISTRY, fqdn=draw(_fqdn_valid(DS_REGISTRY, host)))
        add(K.DATASTORE, ds_id)
        plan.ds_kind[ds_id] = DS_REGISTRY
        registries.append(ds_id)
    trees: dict[str, m.ContentTree] = {}
    for _ in range(draw(st.integers(0, 3))):
        ct_id = str(draw(st.uuids()))
        if registries and draw(st.booleans()):
            ds_id, fmt, url, sha = registries[0], FMT_CONTAINER, draw(_repo_valid()), ""
        else:
            ds_id, fmt = draw(st.sampled_from(http)), draw(st.sampled_from([FMT_RAW, FMT_QCOW2]))
            url, sha = draw(_path_valid()), draw(_sha())
        ct = cfg.contentInfo.add(uuid=ct_id, dsId=ds_id, URL=url, iformat=fmt, sha256=sha,
                                 maxSizeBytes=draw(st.sampled_from([0, MiB, 64 * MiB])),
                                 displayName=draw(st.text(max_size=10)),
                                 generation_count=draw(st.integers(0, 3)))
        trees[ct_id] = ct
        add(K.CONTENT_TREE, ct_id)
        plan.depend((K.DATASTORE, ds_id), (K.CONTENT_TREE, ct_id))
    volumes = []
    for _ in range(draw(st.integers(0, 3))):
        vol_id = str(draw(st.uuids()))
        v = cfg.volumes.add(uuid=vol_id, generationCount=draw(st.integers(0, 2)),
                            maxsizebytes=draw(st.sampled_from([MiB, 16 * MiB])), readonly=draw(st.booleans()),
                            displayName=draw(st.text(max_size=10)))
        if trees and draw(st.booleans()):
            ct_id = draw(st.sampled_from(sorted(trees)))
            v.origin.type, v.origin.downloadContentTreeID = ORIGIN_DOWNLOAD, ct_id
            plan.depend((K.CONTENT_TREE, ct_id), (K.VOLUME, vol_id))
        else:
            v.origin.type = ORIGIN_BLANK
        volumes.append(vol_id)
        add(K.VOLUME, vol_id)
    for _ in range(draw(st.integers(0, 2))):
        app_id = str(draw(st.uuids()))
        app = cfg.apps.add(displayname=draw(st.text(max_size=10)))
        app.uuidandversion.uuid = app_id
        app.purge.counter = draw(st.integers(0, 3))
        for vol_id in draw(st.lists(st.sampled_from(volumes), unique=True, max_size=3)) if volumes else []:
            app.volumeRefList.add(uuid=vol_id, generationCount=draw(st.integers(0, 2)))
            plan.depend((K.VOLUME, vol_id), (K.APP, app_id))
        add(K.APP, app_id)
    if draw(st.booleans()):
        _legacy_app(draw, plan, http, trees)
    plan.base_cfg = copy.deepcopy(cfg)
    return plan


def _legacy_app(draw: st.DrawFn, plan: Plan, http: list[str], trees: dict[str, m.ContentTree]) -> None:
    """A drives-only app: fresh images, an explicit content tree as image, or a blank disk."""
    app_id = str(draw(st.uuids()))
    app = plan.cfg.apps.add(displayname=draw(st.text(max_size=10)))
    app.uuidandversion.uuid = app_id
    used: set[str] = set()
    for index in range(draw(st.integers(1, 3))):
        d = app.drives.add(drvtype=DRIVE_HDD, maxsizebytes=draw(st.sampled_from([0, MiB])))
        choice = draw(st.sampled_from(["fresh", "explicit", "blank"]))
        disk_trees = sorted(t for t, ct in trees.items() if ct.iformat != FMT_CONTAINER and t not in used)
        if choice == "explicit" and disk_trees:
            ct = trees[draw(st.sampled_from(disk_trees))]
            d.image.uuidandversion.uuid, d.image.name, d.image.sha256 = ct.uuid, ct.URL, ct.sha256
            d.image.dsId, d.image.iformat = ct.dsId, ct.iformat
            used.add(ct.uuid)
            plan.depend((K.CONTENT_TREE, ct.uuid), (K.APP, app_id))
        elif choice == "blank":
            d.drvtype, d.maxsizebytes = DRIVE_HDD_EMPTY, draw(st.sampled_from([MiB, 8 * MiB]))
        else:
            image_id = str(draw(st.uuids()))
            ds_id = draw(st.sampled_from(http))
            d.image.uuidandversion.uuid, d.image.name, d.image.sha256 = image_id, draw(_path_valid()), draw(_sha())
            d.image.dsId, d.image.iformat = ds_id, draw(st.sampled_from([FMT_RAW, FMT_QCOW2]))
            used.add(image_id)
            plan.implicit_images.setdefault(image_id, set()).add(app_id)
            plan.depend((K.DATASTORE, ds_id), (K.APP, app_id))
    plan.objects.append((K.APP, app_id))
    plan.base.add((K.APP, app_id))


# -- planted (hostile) objects ----------------------------------------------------------


class _Poison:
    """Collects why a planted object must fail (any one reason is enough)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def add(self, why: str) -> None:
        self.reasons.append(why)

    def __bool__(self) -> bool:
        return bool(self.reasons)


def _planted_id(draw: st.DrawFn, plan: Plan, kind: ObjectKind, poison: _Poison) -> str:
    """Fresh, odd-but-valid, invalid, or a duplicate of a base or planted object of the same kind."""
    base = plan.base_ids(kind)
    planted = [i for k, i in plan.planted if k is kind]
    options = ["fresh", "fresh", "upper", "invalid"] + (["dup-base"] if base else []) + (
        ["dup-planted"] if planted else [])
    choice = draw(st.sampled_from(options))
    if choice == "fresh":
        return str(draw(st.uuids()))
    if choice == "upper":
        return str(draw(st.uuids())).upper()
    if choice == "invalid":
        poison.add("id")
        return draw(invalid_id())
    if choice == "dup-base":
        raw = draw(st.sampled_from(base))
        plan.taint((kind, raw))
        poison.add("duplicate")
        return raw.upper() if draw(st.booleans()) else raw
    raw = draw(st.sampled_from(planted))
    # Both copies fail: the earlier one retroactively, the parser drops every refused id.
    plan.must_fail.add((kind, canon(raw)))
    poison.add("duplicate")
    return raw


def _ref(draw: st.DrawFn, plan: Plan, kind: ObjectKind, own: str, poison: _Poison) -> str:
    """A reference to an object of ``kind``: valid, planted, missing, self, wrong kind or junk."""
    base = plan.base_ids(kind)
    others = [i for k, i in plan.base if k is not kind]
    planted = [i for k, i in plan.planted if k is kind]
    options = ["missing", "self", "junk"] + (["valid"] * 3 if base else []) + (["wrong-kind"] if others else []) + (
        ["planted"] if planted else [])
    choice = draw(st.sampled_from(options))
    if choice == "valid":
        ref = draw(st.sampled_from(base))
        if (kind, ref) in plan.tainted:
            poison.add("ref to a tainted object")
        return ref.upper() if draw(st.booleans()) else ref
    if choice == "planted":
        return draw(st.sampled_from(planted))  # valid or not: unknown
    if choice == "wrong-kind":
        poison.add("ref to another kind")
        return draw(st.sampled_from(sorted(others)))
    if choice == "self":
        if _is_canonical_after_lower(own) and (kind, canon(own)) not in plan.base:
            poison.add("self ref")
        return own
    if choice == "junk":
        poison.add("junk ref")
        return draw(invalid_id())
    poison.add("missing ref")
    return str(draw(st.uuids()))


def _fqdn_hostile(draw: st.DrawFn, kind: int, host: str, wild: bool, poison: _Poison) -> str:
    bad_http = ["", "   ", "http://[::1", "[", "http://[zz]/", "http://\u2100.com", "ftp://127.0.0.1/",
                f"http://user:pw@{host}/", f"http://{host}/?q=1", f"http://{host}/#f", "http://", "http:///x"]
    bad_registry = ["", "ftp://127.0.0.1", f"docker://user:pw@{host}", f"docker://{host}?x", "docker://",
                    f"docker://{host}/UPPER", "http://example.com", "docker://xn--ls8h", "docker://\u00ad",
                    f"docker://{host}#x"]
    # Valid to the parser, unusable at run time (the agent must fail their content, not crash).
    runtime_broken = ["127.0.0.1:99999999", "127.0.0.1:0", "127.0.0.1:", "127.0.0.1:-1", "[::1]:1", "docker://[",
                      "docker://127.0.0.1:99999999", "http://127.0.0.1:65536", "https://localhost:1", "[",
                      "http://xn--ls8h:1"]
    choice = draw(st.sampled_from(["valid", "bad", "path-junk", "runtime-broken"] + (["wild"] if wild else [])))
    if choice == "valid":
        return draw(_fqdn_valid(DS_REGISTRY if kind == DS_REGISTRY else DS_HTTP, host))
    if choice == "runtime-broken":
        return draw(st.sampled_from(runtime_broken))
    if choice == "bad":
        if kind in (DS_HTTP, DS_HTTPS):
            value = draw(st.sampled_from(bad_http))
        elif kind == DS_REGISTRY:
            value = draw(st.sampled_from(bad_registry))
        else:
            value = draw(st.sampled_from(["", "  "]))
        if kind in (DS_HTTP, DS_HTTPS, DS_REGISTRY) or not value.strip():
            poison.add("fqdn")
        return value
    if choice == "path-junk":
        # Stays on the loopback host whatever the junk does to the path.
        return f"http://{host}/{draw(hostile_text())}"
    return draw(st.one_of(hostile_text(), hostile_text().map(lambda t: f"docker://{t}"),
                          hostile_text().map(lambda t: f"https://{t}")))


def _plant_datastore(draw: st.DrawFn, plan: Plan, host: str, wild: bool) -> None:
    poison = _Poison()
    ds_id = _planted_id(draw, plan, K.DATASTORE, poison)
    kind = draw(st.sampled_from([DS_HTTP, DS_HTTPS, DS_REGISTRY, *DS_KNOWN_UNSUPPORTED, 0, 8, INT32_MAX, -1]))
    if kind not in (DS_HTTP, DS_HTTPS, DS_REGISTRY, *DS_KNOWN_UNSUPPORTED):
        poison.add("dType")
    fqdn = _fqdn_hostile(draw, kind, host, wild, poison)
    dpath = draw(st.one_of(_dpath_valid(), st.sampled_from(BAD_PATHS), hostile_text()))
    if dpath in BAD_PATHS:
        poison.add("dpath")
    ds = plan.cfg.datastores.add(id=ds_id, dType=kind, fqdn=fqdn, dpath=dpath, apiKey=draw(hostile_text()),
                                 password=draw(hostile_text()), region=draw(hostile_text()))
    for pem in draw(st.lists(st.binary(max_size=64), max_size=2)):
        ds.dsCertPEM.append(pem)
    _planted(plan, K.DATASTORE, ds_id, poison)


def _plant_content_tree(draw: st.DrawFn, plan: Plan) -> None:
    poison = _Poison()
    ct_id = _planted_id(draw, plan, K.CONTENT_TREE, poison)
    ct = plan.cfg.contentInfo.add(uuid=ct_id, displayName=draw(hostile_text()))
    where = draw(st.sampled_from(["dsId", "dsId", "list", "none"]))
    ds_ref = _ref(draw, plan, K.DATASTORE, ct_id, poison) if where != "none" else ""
    if where == "dsId":
        ct.dsId = ds_ref
    elif where == "list":
        ct.ds_ids_list.append(ds_ref)
    else:
        poison.add("no datastore")
    fmt = draw(st.sampled_from([*FMT_DISK, FMT_CONTAINER, *FMT_UNSUPPORTED, INT32_MAX, -7]))
    ct.iformat = fmt
    if fmt not in (*FMT_DISK, FMT_CONTAINER):
        poison.add("format")
    ds_kind = plan.ds_kind.get(canon(ds_ref)) if (K.DATASTORE, canon(ds_ref)) in plan.base else None
    if ds_kind is not None and fmt == FMT_CONTAINER and ds_kind != DS_REGISTRY:
        poison.add("container from an http datastore")
    if ds_kind == DS_REGISTRY and fmt in FMT_DISK:
        poison.add("disk image from a registry")
    url = draw(st.one_of(_path_valid(), _repo_valid(), st.sampled_from(BAD_PATHS + ("",)), hostile_text()))
    ct.URL = url
    if url in BAD_PATHS or url == "":
        poison.add("URL")
    sha = draw(st.one_of(_sha(), _sha().map(str.upper), _sha().map(lambda h: "sha256:" + h), st.just(""),
                         st.sampled_from(["abc", "g" * 64, "0" * 63, "0" * 65]), hostile_text()))
    ct.sha256 = sha
    if sha in ("abc", "g" * 64, "0" * 63, "0" * 65):
        poison.add("sha256")
    if sha == "" and fmt in FMT_DISK:
        poison.add("no sha256")
    size = draw(st.sampled_from([0, MiB, PIB, PIB + 1, INT64_MAX, UINT64_MAX]))
    ct.maxSizeBytes = size
    if size > PIB:
        poison.add("maxSizeBytes")
    gen = draw(st.sampled_from([0, 1, -1, INT64_MIN, INT64_MAX]))
    ct.generation_count = gen
    if gen < 0 or gen > PIB:
        poison.add("generation")
    _planted(plan, K.CONTENT_TREE, ct_id, poison)


def _plant_volume(draw: st.DrawFn, plan: Plan) -> None:
    poison = _Poison()
    vol_id = _planted_id(draw, plan, K.VOLUME, poison)
    size = draw(st.sampled_from([MiB, 0, -1, INT64_MIN, INT64_MAX, PIB + 1, 2**40]))
    gen = draw(st.sampled_from([0, 1, -1, INT64_MIN, INT64_MAX]))
    v = plan.cfg.volumes.add(uuid=vol_id, maxsizebytes=size, generationCount=gen, readonly=draw(st.booleans()),
                             displayName=draw(hostile_text()))
    if size < 0 or size > PIB:
        poison.add("maxsizebytes")
    if gen < 0 or gen > PIB:
        poison.add("generationCount")
    origin = draw(st.sampled_from([ORIGIN_BLANK, ORIGIN_DOWNLOAD, ORIGIN_DOWNLOAD, 0, 3, INT32_MAX, -1]))
    v.origin.type = origin
    if origin == ORIGIN_DOWNLOAD:
        v.origin.downloadContentTreeID = _ref(draw, plan, K.CONTENT_TREE, vol_id, poison)
    elif origin == ORIGIN_BLANK:
        if size == 0:
            poison.add("blank of size 0")
        if draw(st.booleans()):
            v.origin.downloadContentTreeID = draw(hostile_text())  # ignored for BLANK
    else:
        poison.add("origin")
    _planted(plan, K.VOLUME, vol_id, poison)


def _plant_app(draw: st.DrawFn, plan: Plan) -> None:
    poison = _Poison()
    app_id = _planted_id(draw, plan, K.APP, poison)
    app = plan.cfg.apps.add(displayname=draw(hostile_text()))
    app.uuidandversion.uuid = app_id
    app.purge.counter = draw(st.sampled_from([0, 1, 2**32 - 1]))
    for _ in range(draw(st.integers(0, 3))):
        gen = draw(st.sampled_from([0, 1, -1, INT64_MAX]))
        app.volumeRefList.add(uuid=_ref(draw, plan, K.VOLUME, app_id, poison), generationCount=gen)
        if gen < 0 or gen > PIB:
            poison.add("volumeRef generation")
    drive_poison = _Poison()
    images: list[str] = []
    contested: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        images.append(_plant_drive(draw, plan, app.drives.add(), drive_poison, contested))
    seen = [i for i in images if i]
    if len(seen) != len(set(map(canon, seen))):
        drive_poison.add("same image twice")
    if app.drives and not app.volumeRefList:  # volumeRefList wins: the drives are ignored otherwise
        if drive_poison:
            poison.add("drive: " + ", ".join(drive_poison.reasons))
        if contested:
            plan.conflicts.append(((K.APP, canon(app_id)), contested))
    _planted(plan, K.APP, app_id, poison)


def _plant_drive(draw: st.DrawFn, plan: Plan, d: m.Drive, poison: _Poison, contested: list[str]) -> str:
    """One legacy drive; returns its image UUID ("" if none or junk)."""
    drvtype = draw(st.sampled_from([DRIVE_HDD, DRIVE_HDD, DRIVE_HDD_EMPTY, 0, 1, 3, 5, INT32_MAX, -1]))
    d.drvtype = drvtype
    if drvtype not in (0, 1, 2, 3, 4):
        poison.add("drvtype")
    size = draw(st.sampled_from([0, MiB, -1, INT64_MAX]))
    d.maxsizebytes = size
    if size < 0 or size > PIB:
        poison.add("drive size")
    if drvtype == DRIVE_HDD_EMPTY and size == 0:
        poison.add("empty drive of size 0")
    d.readonly, d.preserve = draw(st.booleans()), draw(st.booleans())
    choice = draw(st.sampled_from(["none", "fresh", "fresh", "explicit", "conflict", "junk"]))
    if choice == "none":
        if drvtype != DRIVE_HDD_EMPTY:
            poison.add("drive without image")
        return ""
    image = d.image
    base_http = [i for i in plan.base_ids(K.DATASTORE) if plan.ds_kind.get(i) in (DS_HTTP, DS_HTTPS)]
    if choice == "conflict" and plan.implicit_images and base_http and drvtype in (0, 1, 2, 3):
        # A base legacy app's image described differently: every app using it is refused (by design).
        image_id = draw(st.sampled_from(sorted(plan.implicit_images)))
        image.uuidandversion.uuid, image.name, image.sha256 = image_id, "conflict.raw", draw(_sha())
        image.dsId, image.iformat = draw(st.sampled_from(base_http)), FMT_RAW
        contested.append(image_id)
        return image_id
    if choice == "explicit" and plan.base_ids(K.CONTENT_TREE):
        ct_id = draw(st.sampled_from(plan.base_ids(K.CONTENT_TREE)))
        image.uuidandversion.uuid, image.name, image.sha256 = ct_id, draw(hostile_text()), draw(_sha())
        image.dsId, image.iformat = draw(hostile_text()), draw(st.sampled_from([FMT_RAW, FMT_QCOW2, 99]))
        if drvtype != DRIVE_HDD_EMPTY:
            poison.add("image disagrees with the explicit content tree")  # a fresh sha never matches
        return ct_id
    if choice == "junk":
        image.uuidandversion.uuid = draw(invalid_id().filter(bool))
        image.name = draw(hostile_text())
        poison.add("image id")
        return ""
    image_id = str(draw(st.uuids()))
    image.uuidandversion.uuid = image_id
    image.name = draw(st.one_of(_path_valid(), st.sampled_from(BAD_PATHS), hostile_text()))
    image.sha256 = draw(st.one_of(_sha(), st.just(""), hostile_text()))
    image.dsId = _ref(draw, plan, K.DATASTORE, image_id, _Poison())
    image.iformat = draw(st.sampled_from([FMT_RAW, FMT_QCOW2, FMT_CONTAINER, 0, 99]))
    image.sizeBytes = draw(st.sampled_from([0, MiB, -1, INT64_MAX]))
    return image_id


def _planted(plan: Plan, kind: ObjectKind, raw_id: str, poison: _Poison) -> None:
    key = (kind, canon(raw_id))
    plan.objects.append(key)
    plan.planted.append((kind, raw_id))
    if poison:
        plan.must_fail.add(key)


def _plant_item(draw: st.DrawFn, plan: Plan) -> None:
    key = draw(st.sampled_from([*SETTING_KEYS, *FLAG_KEYS, "some.other.key", ""]))
    value = draw(st.one_of(st.sampled_from(["", "nan", "-1", "1e999", "9" * 5000, "inf", "-inf", "1", "0.5",
                                            "true", "raw", "qcow2", "TRUE", " 1"]), hostile_text()))
    plan.cfg.configItems.add(key=key, value=value)
    if key in FLAG_KEYS:
        if value not in FLAG_KEYS[key]:
            plan.bad_items.add(key)
    elif key in SETTING_KEYS and value in ("", "nan", "-1", "1e999", "9" * 5000, "inf", "-inf"):
        plan.bad_items.add(key)


@st.composite
def hostile_plans(draw: st.DrawFn, host: str = "127.0.0.1:9", wild_hosts: bool = False,
                  max_planted: int = 8) -> Plan:
    """A valid base config plus planted hostile objects, in random order within each section."""
    plan = draw(valid_base(host))
    for _ in range(draw(st.integers(1, max_planted))):
        what = draw(st.sampled_from(["datastore", "content_tree", "content_tree", "volume", "volume", "app",
                                     "app", "item"]))
        if what == "datastore":
            _plant_datastore(draw, plan, host, wild_hosts)
        elif what == "content_tree":
            _plant_content_tree(draw, plan)
        elif what == "volume":
            _plant_volume(draw, plan)
        elif what == "app":
            _plant_app(draw, plan)
        else:
            _plant_item(draw, plan)
    # Drives describing one image differently refuse every app involved (by design). A base app
    # already taken down by a duplicate never gets that far; any other victim makes the conflict
    # fire, so the planted app fails (it fails anyway if its own drives do not plan cleanly).
    already = set(plan.tainted)
    for app_key, images in plan.conflicts:
        victims = {(K.APP, v) for image in images for v in plan.implicit_images.get(image, ())}
        if victims - already:
            plan.must_fail.add(app_key)
        for victim in victims:
            plan.taint(victim)
    _shuffle_sections(draw, plan.cfg)
    return plan


def _shuffle_sections(draw: st.DrawFn, cfg: m.EdgeDevConfig) -> None:
    """Section order must not matter: a planted object may come before the valid one it copies."""
    for name in ("datastores", "contentInfo", "volumes", "apps"):
        items = [copy.deepcopy(x) for x in getattr(cfg, name)]
        order = draw(st.permutations(range(len(items))))
        del getattr(cfg, name)[:]
        for i in order:
            getattr(cfg, name).add().CopyFrom(items[i])


# -- config bytes -------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bit flips, truncation, a splice, an insertion or a duplicated region."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "duplicate", "splice"]))
        if not buf:
            buf += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[at:at + draw(st.integers(1, 16))]
        elif op == "duplicate":
            end = min(len(buf), at + draw(st.integers(1, 64)))
            buf[at:at] = buf[at:end]
        else:
            other = draw(st.integers(0, len(buf) - 1))
            buf = buf[:at] + buf[other:]
    return bytes(buf)


def config_bytes(host: str = "127.0.0.1:9") -> st.SearchStrategy[tuple[str, bytes]]:
    """(how it was made, bytes): random bytes, or a real config (binary or JSON) mutated."""
    def encoded(plan: Plan, as_json: bool) -> bytes:
        if as_json:
            from google.protobuf import json_format

            return json_format.MessageToJson(plan.cfg).encode()
        return plan.cfg.SerializeToString()

    real = st.tuples(hostile_plans(host, wild_hosts=True, max_planted=3), st.booleans()).map(
        lambda pj: ("json" if pj[1] else "binary", encoded(*pj)))
    return st.one_of(
        st.binary(max_size=512).map(lambda b: ("random", b)),
        st.sampled_from([b"{", b"[]", b"null", b"{}", b"\xef\xbb\xbf{}", b"{" * 5000, b"[" * 100_000,
                         b"\n" * 10 + b"{", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 20]).map(
            lambda b: ("fixed", b)),
        real,
        real.flatmap(lambda kb: mutated(kb[1]).map(lambda b, k=kb[0]: (f"mutated-{k}", b))),
    )


# -- JSON documents for the CLI -------------------------------------------------------

_JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(INT64_MIN - 5, UINT64_MAX + 5),
                         st.floats(allow_nan=True, allow_infinity=True), hostile_text(), st.just([]), st.just({}))


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> Any:
    """A JSON document with a few values replaced, keys dropped or added, and types confused."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, 4))):  # 0: the document as it was
        paths = list(_json_paths(doc))
        path = draw(st.sampled_from(paths))
        parent, key = _json_at(doc, path[:-1]), path[-1] if path else None
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "wrap"]))
        if key is None:
            if op == "replace":
                doc = draw(_JSON_LEAVES)
            continue
        if op == "replace":
            parent[key] = draw(_JSON_LEAVES)
        elif op == "drop":
            del parent[key]
        elif op == "wrap":
            parent[key] = [parent[key]] if draw(st.booleans()) else {"x": parent[key]}
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["uuid", "maxsizebytes", "unknownField", "drives", "dType", "id"]))] = (
                draw(_JSON_LEAVES))
        else:
            parent.append(draw(_JSON_LEAVES))
    return doc


def _json_paths(doc: Any, prefix: tuple = ()) -> Any:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_paths(v, prefix + (i,))


def _json_at(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def json_text(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


# -- tar layers -------------------------------------------------------------------------

SENTINEL = "{SENTINEL}"  # replaced with the sentinel directory's absolute path when the tar is built
_COMPONENTS = ("a", "b", "etc", "..", ".", "", "pwned", ".wh.a", ".wh.b", ".wh..wh..opq", ".wh.", ".wh..",
               ".wh...", "é", "\x01x", "x" * 300, "sentinel", "root")
_TYPES = (tarfile.REGTYPE, tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
          tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
          tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE, b"V", b"Z", b"x", b"g")
_LINKS = ("", "/", ".", "..", "../sentinel", "../sentinel/secret", "../../sentinel/secret", "a", "a/b", "etc",
          SENTINEL, SENTINEL + "/secret", "../" * 8 + "sentinel/secret", "a/../../sentinel", "/etc/passwd",
          "pwned", ".wh.a")
_PAX = st.dictionaries(
    st.sampled_from(["size", "uid", "gid", "mtime", "path", "linkpath", "uname", "GNU.sparse.map",
                     "GNU.sparse.size", "SCHILY.xattr.user.x", "atime"]),
    st.sampled_from(["-1", "nan", "1e400", "99999999999999999999", "0", "../../sentinel/pwned", "a/b", "",
                     "1,2,3", "x" * 5000, "\x00"]),
    max_size=2,
)


@dataclass(frozen=True)
class Member:
    name: str
    type: bytes
    linkname: str
    data: bytes
    declared_size: int | None  # None: the real data length; else a lying header
    mode: int
    uid: int
    mtime: float
    devmajor: int
    pax: dict[str, str]


@functools.cache
def _name() -> st.SearchStrategy[str]:
    rel = st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=5).map("/".join)
    return st.one_of(
        rel, rel.map(lambda r: "/" + r), rel.map(lambda r: "./" + r), rel.map(lambda r: f"{SENTINEL}/{r}"),
        rel.map(lambda r: "../" + r), st.sampled_from(["", "/", ".", "..", "./", "pwned", "a/pwned"]),
    )


_ESCAPES = ("../sentinel", SENTINEL, "../../sentinel", "a/../../sentinel", SENTINEL + "/secret",
            "../sentinel/secret", "/", "..", "a", "b")


@functools.cache
def _plausible_member() -> st.SearchStrategy[Member]:
    """An entry an unpacker accepts on its own: clean names, common types, links aimed outside.

    Most entries are these, so a layer gets far enough for a later entry to try the link.
    """
    return st.builds(
        Member,
        name=st.lists(st.sampled_from(["a", "b", "c", "pwned", "secret"]), min_size=1, max_size=3).map("/".join),
        type=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                              tarfile.FIFOTYPE]),
        linkname=st.sampled_from(_ESCAPES),
        data=st.sampled_from([b"", b"pwned"]),
        declared_size=st.none(),
        mode=st.sampled_from([0o644, 0o755, 0o000, 0o4755, 0o1777]),
        uid=st.just(0),
        mtime=st.just(0),
        devmajor=st.just(0),
        pax=st.just({}),
    )


@functools.cache
def tar_members() -> st.SearchStrategy[Member]:
    return st.one_of(_plausible_member(), _plausible_member(), _hostile_member())


@functools.cache
def _hostile_member() -> st.SearchStrategy[Member]:
    return st.builds(
        Member,
        name=_name(),
        type=st.sampled_from(_TYPES),
        linkname=st.one_of(st.sampled_from(_LINKS), hostile_text(12)),
        data=st.one_of(st.just(b""), st.binary(max_size=64), st.integers(1, 5000).map(lambda n: b"z" * n)),
        declared_size=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 2**33)),
        mode=st.integers(0, 0o7777),
        uid=st.sampled_from([0, 1000, 65534, 2**21 - 1]),
        mtime=st.sampled_from([0, 1, 2**32, -1, 1.5]),
        devmajor=st.integers(0, 300),
        pax=st.one_of(st.just({}), st.just({}), _PAX),
    )


@dataclass(frozen=True)
class LayerPlan:
    members: tuple[Member, ...]
    fmt: int
    compression: str | None
    corruption: tuple[str, float, int]


@st.composite
def layer_stacks(draw: st.DrawFn, max_layers: int = 3) -> list[LayerPlan]:
    """1..max_layers layers; half the entries live beneath an earlier entry (of this or a lower
    layer), so "plant a symlink or file, then write through it" comes up often, not by luck."""
    names: list[str] = []
    layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        members = []
        for _ in range(draw(st.integers(0, 8))):
            mem = draw(tar_members())
            if names and draw(st.booleans()):
                parent = draw(st.sampled_from(names)).rstrip("/")
                mem = dataclasses.replace(mem, name=f"{parent}/{draw(st.sampled_from(_COMPONENTS))}")
            names.append(mem.name)
            members.append(mem)
        layers.append(LayerPlan(
            tuple(members),
            draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])),
            draw(st.sampled_from([None, "gzip", "zstd"])),
            draw(st.tuples(st.sampled_from(["none", "none", "none", "truncate", "flip", "garbage"]),
                           st.floats(0, 1), st.integers(0, 255)))))
    return layers


def build_tar(plan: LayerPlan, sentinel: str) -> bytes:
    """Tar bytes for ``plan`` (members the writer itself refuses are left out), then corrupted."""
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=plan.fmt)
    for mem in plan.members:
        info = tarfile.TarInfo(mem.name.replace(SENTINEL, sentinel))
        info.type = mem.type
        info.linkname = mem.linkname.replace(SENTINEL, sentinel)
        info.mode, info.uid, info.gid, info.mtime = mem.mode, mem.uid, mem.uid, mem.mtime
        info.devmajor, info.devminor = mem.devmajor, mem.devmajor // 2
        info.size = len(mem.data) if mem.declared_size is None else mem.declared_size
        if plan.fmt == tarfile.PAX_FORMAT:
            info.pax_headers = {k: v.replace(SENTINEL, sentinel) for k, v in mem.pax.items()}
        try:
            header = info.tobuf(plan.fmt, "utf-8", "surrogateescape")
        except (ValueError, OverflowError, UnicodeError, TypeError):
            continue  # not representable in this format: the writer refuses it, so would an image builder
        tar.fileobj.write(header)
        tar.offset += len(header)
        if mem.data:
            tar.fileobj.write(mem.data)
            pad = -len(mem.data) % tarfile.BLOCKSIZE
            tar.fileobj.write(tarfile.NUL * pad)
            tar.offset += len(mem.data) + pad
    tar.close()
    data = bytearray(buf.getvalue())
    what, where, byte = plan.corruption
    at = int(where * max(len(data) - 1, 0))
    if what == "truncate":
        del data[at:]
    elif what == "flip" and data:
        data[at] ^= byte or 1
    elif what == "garbage":
        data[at:at] = bytes([byte]) * 700
    return bytes(data)
