"""Container content trees from a real registry, unpacked into directory volumes.

Every test drives the real CLI (``device run --once``, ``device status -o json``)
against a real docker-registry and checks what a user would see: files on disk,
object states, error descriptions and how often the registry was asked for what.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from edgevol.device.datastores.oci_manifest import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_MANIFEST,
    host_platform,
)
from edgevol.tools.oci_image import Image, Index, Layer, build_image, build_index, push, sha256_digest
from tests.conftest import by_name, device_status, run_cli
from tests.configs import ConfigBuilder, new_id
from tests.registry_fixture import free_port, registry  # noqa: F401  (fixture)

MiB = 1 << 20
DATA_DIR_ENTRIES = {"agent.lock", "cas", "checkpoint", "state.db", "volumes"}


# -- helpers ------------------------------------------------------------------


def _run(tmp_path: Path, b: ConfigBuilder, data: Path) -> int:
    return _run_proc(tmp_path, b, data).returncode


def _run_proc(tmp_path: Path, b: ConfigBuilder, data: Path) -> subprocess.CompletedProcess[str]:
    return _run_file(b.save(tmp_path / "config.json"), data)


def _run_file(cfg: Path, data: Path) -> subprocess.CompletedProcess[str]:
    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", timeout=60)
    assert "task crashed" not in proc.stderr, proc.stderr  # every failure must land in a state
    return proc


def _host_key() -> str:
    os_name, arch, variant = host_platform()
    return f"{os_name}/{arch}" + (f"/{variant}" if variant else "")


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _cas_blobs(data: Path) -> set[str]:
    return {p.name for p in (data / "cas/blobs/sha256").iterdir()}


def _index_roots(data: Path) -> dict[str, str]:
    """content tree uuid -> digest of its root, from the CAS's OCI index.json."""
    doc = json.loads((data / "cas/index.json").read_text())
    return {d["annotations"]["io.edgevol.content-tree"]: _hex(d["digest"]) for d in doc["manifests"]}


def _expected_components(top: Image | Index) -> list[str]:
    """index (if any), image manifest, config, layers: the order status reports them in."""
    if isinstance(top, Index):
        entries = json.loads(top.manifest)["manifests"]
        chosen = next(e["digest"] for e in entries if "/".join(
            e["platform"][k] for k in ("os", "architecture", "variant") if k in e["platform"]) == _host_key())
        image = next(i for i in top.images if i.digest == chosen)
        heads = [top.digest, image.digest]
    else:
        image, heads = top, [top.digest]
    manifest = json.loads(image.manifest)
    return [_hex(d) for d in heads] + [_hex(manifest["config"]["digest"])] + [
        _hex(layer["digest"]) for layer in manifest["layers"]]


def _assert_tree_complete(st: dict, name: str, top: Image | Index, *, refs: dict[str, int] | None = None) -> dict:
    """The tree is LOADED at 100 %, lists each of its blobs LOADED, and its size is their sum."""
    tree = by_name(st["content_trees"], name)
    assert tree["state"] == "LOADED" and tree["progress"] == 100 and tree["error"] is None, tree
    assert tree["sha256"] == _hex(top.digest)
    assert tree["component_sha_list"] == _expected_components(top)
    blobs = {b["sha256"]: b for b in st["blobs"]}
    for sha in tree["component_sha_list"]:
        blob = blobs[sha]
        assert blob["state"] == "LOADED" and blob["progress"] == 100 and blob["error"] is None, blob
        assert blob["ref_count"] == (refs or {}).get(sha, 1), blob
    assert tree["cur_size_bytes"] == sum(blobs[s]["size"] for s in tree["component_sha_list"])
    return tree


def _volume(st: dict, name: str) -> dict:
    return by_name(st["volumes"], name)


def _rootfs(vol: dict) -> Path:
    assert vol["state"] == "CREATED_VOLUME", vol
    path = Path(vol["path"])
    assert path.name.endswith(".container") and path.is_dir()
    return path / "rootfs"


def _tar(*members: tuple) -> bytes:
    """Hand-made tar bytes: ('file', name, data[, mode]), ('dir', name), ('symlink'|'hardlink', name, target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = rest[0]
                info.size = len(data)
                info.mode = rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, rest[0], 0o777
            elif kind == "hardlink":
                info.type, info.linkname, info.mode = tarfile.LNKTYPE, rest[0], 0o644
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _image_with_config(layers: list[Layer], config: bytes) -> Image:
    """An OCI image whose config blob is exactly ``config`` (valid or not)."""
    digest = sha256_digest(config)
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": digest, "size": len(config)},
                "layers": [layer.descriptor() for layer in layers]}
    body = json.dumps(manifest, sort_keys=True).encode()
    return Image(body, MEDIA_OCI_MANIFEST, {digest: config, **{l.digest: l.blob for l in layers}}, config)


# -- 1 + 6: file kinds, compressions, media types; status lists every blob -----


def test_multi_layer_image_becomes_a_rootfs(tmp_path, registry):  # noqa: F811
    base = Layer.from_files({"etc/": ("dir",), "etc/os-release": b"ID=edgevol\n", "bin/": ("dir",),
                             "bin/tool": ("file", b"#!/bin/sh\necho hi\n", 0o755), "var/old": b"stale"},
                            compression="gzip")
    app = Layer.from_files({"var/old": ("whiteout",), "srv/": ("dir",), "srv/app.conf": b"port=80\n",
                            "srv/link": ("symlink", "app.conf")}, compression="zstd")
    image = build_image([base, app], {"Cmd": ["/bin/tool"]})
    digest = push(registry.url, "apps/web", "v1", build_index({"linux/amd64": image, "linux/arm64/v8": image}))
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    ct = b.content_tree(reg, "apps/web:v1", "", "container", name="web-image")
    b.download_volume(ct, 64 * MiB, name="web-root")
    data = tmp_path / "dev"

    assert _run(tmp_path, b, data) == 0

    st = device_status(data)
    vol = by_name(st["volumes"], "web-root")
    assert vol["state"] == "CREATED_VOLUME", vol
    root = Path(vol["path"])
    assert root.name.endswith(".container") and (root / "image-config.json").is_file()
    rootfs = root / "rootfs"
    assert (rootfs / "etc/os-release").read_bytes() == b"ID=edgevol\n"
    assert os.stat(rootfs / "bin/tool").st_mode & 0o777 == 0o755
    assert not (rootfs / "var/old").exists() and not (rootfs / "var/.wh.old").exists()
    assert os.readlink(rootfs / "srv/link") == "app.conf"
    tree = by_name(st["content_trees"], "web-image")
    assert tree["state"] == "LOADED" and tree["sha256"] == digest.removeprefix("sha256:")
    # index, manifest, config and both layers are blobs of the tree, all LOADED
    assert len(tree["component_sha_list"]) == 5
    blobs = {b["sha256"]: b for b in st["blobs"]}
    for sha in tree["component_sha_list"]:
        assert blobs[sha]["state"] == "LOADED" and blobs[sha]["ref_count"] == 1
    assert tree["cur_size_bytes"] == sum(blobs[s]["size"] for s in tree["component_sha_list"])


def test_entry_kinds_whiteouts_compressions_and_docker_media_types(tmp_path, registry):  # noqa: F811
    # OCI image, pushed as a plain manifest: gzip, zstd and uncompressed layers.
    lower = Layer.from_files({
        "etc/": ("dir",), "etc/os-release": b"ID=kinds\n",
        "bin/": ("dir",), "bin/tool": ("file", b"#!/bin/sh\necho kinds\n", 0o755),
        "root/": ("dir", 0o700), "root/secret": ("file", b"s3cret", 0o600),
        "tmp/": ("dir", 0o1777),
        "var/old": b"stale", "var/cache/a": b"a", "var/cache/b": b"b",
        "opt/keep/x": b"x", "opt/stays": b"stays", "data/orig": b"v1",
    }, compression="gzip")
    middle = Layer.from_files({
        "bin/tool-alias": ("hardlink", "bin/tool"),
        "srv/app.conf": b"port=80\n", "srv/link": ("symlink", "app.conf"),
        "etc/abs": ("symlink", "/etc/os-release"),
        "var/old": ("whiteout",),          # remove a file of a lower layer
        "opt/keep": ("whiteout",),         # remove a whole directory of a lower layer
        "var/cache": ("opaque",),          # hide everything below var/cache of lower layers ...
        "var/cache/c": b"c",               # ... but keep what this layer adds
    }, compression="zstd")
    upper = Layer.from_files({"data/orig": b"v2", "lib/new": ("file", b"new", 0o640)}, compression=None,
                             uid=1234, gid=2345)
    oci = build_image([lower, middle, upper], {"Cmd": ["/bin/tool"]})
    push(registry.url, "kinds/oci", "v1", oci)

    # Docker v2 image (manifest list + manifest, docker config and layer types).
    d_lower = Layer.from_files({"app/run.sh": ("file", b"docker-run", 0o750), "app/gone": b"gone",
                                "app/dir/old": b"old"}, flavor="docker")
    d_upper = Layer.from_files({"app/gone": ("whiteout",), "app/dir": ("opaque",), "app/dir/new": b"new",
                                "app/hl": ("hardlink", "app/run.sh")}, flavor="docker")
    docker_image = build_image([d_lower, d_upper], {"Cmd": ["/app/run.sh"]}, flavor="docker")
    docker_index = build_index({_host_key(): docker_image}, flavor="docker")
    push(registry.url, "kinds/docker", "v1", docker_index)

    b = ConfigBuilder()
    reg = b.registry(registry.host)
    b.download_volume(b.content_tree(reg, "kinds/oci:v1", "", "container", name="oci"), 64 * MiB, name="oci-root")
    b.download_volume(b.content_tree(reg, "kinds/docker:v1", "", "container", name="docker"), 64 * MiB,
                      name="docker-root")
    data = tmp_path / "data"

    proc = _run_proc(tmp_path, b, data)
    assert proc.returncode == 0, proc.stderr

    st = device_status(data)
    # -- OCI volume: every entry kind, in place with its mode
    vol = _volume(st, "oci-root")
    assert (Path(vol["path"]) / "image-config.json").read_bytes() == oci.config
    r = _rootfs(vol)
    assert (r / "etc/os-release").read_bytes() == b"ID=kinds\n"
    assert (r / "bin/tool").stat().st_mode & 0o7777 == 0o755
    assert (r / "root/secret").stat().st_mode & 0o7777 == 0o600
    assert (r / "root").stat().st_mode & 0o7777 == 0o700
    assert (r / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (r / "lib/new").stat().st_mode & 0o7777 == 0o640 and (r / "lib/new").read_bytes() == b"new"
    assert (r / "data/orig").read_bytes() == b"v2"  # an upper layer replaces a lower file
    if os.geteuid() == 0:  # owners are only honoured when the agent may set them
        assert ((r / "lib/new").stat().st_uid, (r / "lib/new").stat().st_gid) == (1234, 2345)
    tool, alias = (r / "bin/tool").stat(), (r / "bin/tool-alias").lstat()
    assert (tool.st_ino, tool.st_nlink) == (alias.st_ino, 2)
    assert os.readlink(r / "srv/link") == "app.conf" and (r / "srv/link").read_bytes() == b"port=80\n"
    assert os.readlink(r / "etc/abs") == "/etc/os-release"  # kept as data, never followed
    assert not os.path.lexists(r / "var/old")
    assert not os.path.lexists(r / "opt/keep") and (r / "opt/stays").read_bytes() == b"stays"
    assert sorted(os.listdir(r / "var/cache")) == ["c"]
    names = [n for _d, ds, fs in os.walk(r) for n in ds + fs]
    assert not [n for n in names if n.startswith(".wh.")], names

    # -- Docker volume
    dr = _rootfs(_volume(st, "docker-root"))
    assert (dr / "app/run.sh").read_bytes() == b"docker-run"
    assert (dr / "app/run.sh").stat().st_mode & 0o7777 == 0o750
    assert not os.path.lexists(dr / "app/gone")
    assert sorted(os.listdir(dr / "app/dir")) == ["new"]
    assert (dr / "app/hl").stat().st_ino == (dr / "app/run.sh").stat().st_ino

    # -- status: every blob of each tree, LOADED, counted, summed
    _assert_tree_complete(st, "oci", oci)
    docker_tree = _assert_tree_complete(st, "docker", docker_index)
    top, manifest = docker_tree["component_sha_list"][:2]
    cas = data / "cas/blobs/sha256"
    assert json.loads((cas / top).read_bytes())["mediaType"] == MEDIA_DOCKER_MANIFEST_LIST
    assert json.loads((cas / manifest).read_bytes())["mediaType"] == MEDIA_DOCKER_MANIFEST
    assert json.loads((cas / _hex(oci.digest)).read_bytes())["mediaType"] == MEDIA_OCI_MANIFEST
    # every layer blob came from the registry exactly once
    for layer in (lower, middle, upper, d_lower, d_upper):
        assert len(registry.blob_gets(layer.digest)) == 1
    assert _index_roots(data) == {by_name(st["content_trees"], "oci")["uuid"]: _hex(oci.digest),
                                  docker_tree["uuid"]: _hex(docker_index.digest)}


# -- 2: a shared base layer is fetched and stored once --------------------------


def test_shared_base_layer_is_fetched_and_stored_once(tmp_path, registry):  # noqa: F811
    base = Layer.from_files({"base/marker": b"shared-base", "base/big": os.urandom(256 << 10)})
    img_a = build_image([base, Layer.from_files({"app/a": b"A"})])
    img_b = build_image([base, Layer.from_files({"app/b": b"B"})])
    push(registry.url, "shared/a", "v1", img_a)
    push(registry.url, "shared/b", "v1", img_b)
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    b.download_volume(b.content_tree(reg, "shared/a:v1", "", "container", name="tree-a"), 8 * MiB, name="vol-a")
    b.download_volume(b.content_tree(reg, "shared/b:v1", "", "container", name="tree-b"), 8 * MiB, name="vol-b")
    data = tmp_path / "data"

    assert _run(tmp_path, b, data) == 0

    st = device_status(data)
    assert len(registry.blob_gets(base.digest)) == 1
    shared = {_hex(base.digest): 2}
    tree_a = _assert_tree_complete(st, "tree-a", img_a, refs=shared)
    tree_b = _assert_tree_complete(st, "tree-b", img_b, refs=shared)
    components = set(tree_a["component_sha_list"]) | set(tree_b["component_sha_list"])
    assert len(components) == 7  # 2 x (manifest, config, own layer) + the shared base
    assert _cas_blobs(data) == components
    assert len(st["blobs"]) == 7
    for name, own in (("vol-a", "app/a"), ("vol-b", "app/b")):
        r = _rootfs(_volume(st, name))
        assert (r / "base/marker").read_bytes() == b"shared-base" and (r / own).is_file()


def test_same_image_in_several_trees_is_walked_and_fetched_once(tmp_path, registry):  # noqa: F811
    image = build_image([Layer.from_files({"same/big": os.urandom(256 << 10)}), Layer.from_files({"same/x": b"x"})])
    index = build_index({_host_key(): image})
    push(registry.url, "same/app", "v1", index)
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    for i in range(4):  # four apps on one image: their trees resolve at the same time
        b.download_volume(b.content_tree(reg, "same/app:v1", "", "container", name=f"same-{i}"), 8 * MiB,
                          name=f"same-vol-{i}")
    data = tmp_path / "data"

    assert _run(tmp_path, b, data) == 0  # and no task crashed on the shared manifests

    st = device_status(data)
    components = _expected_components(index)
    for i in range(4):
        _assert_tree_complete(st, f"same-{i}", index, refs={sha: 4 for sha in components})
        assert (_rootfs(_volume(st, f"same-vol-{i}")) / "same/x").read_bytes() == b"x"
    assert _cas_blobs(data) == set(components)
    for digest in (index.digest, image.digest):
        assert len([r for r in registry.requests() if r.method == "GET" and r.path.endswith(digest)]) == 1
    for layer in json.loads(image.manifest)["layers"]:
        assert len(registry.blob_gets(layer["digest"])) == 1


# -- 3: a multi-platform index yields this device's image ------------------------


def test_multi_arch_index_picks_this_platform(tmp_path, registry):  # noqa: F811
    _, arch, _ = host_platform()
    other_arch = "arm64" if arch != "arm64" else "amd64"
    mine = build_image([Layer.from_files({"marker": f"built for {arch}".encode()})], arch=arch)
    other = build_image([Layer.from_files({"marker": f"built for {other_arch}".encode()})], arch=other_arch)
    # The other platform comes first, so taking the first entry would be wrong.
    index = build_index({f"linux/{other_arch}": other, _host_key(): mine})
    push(registry.url, "multi/arch", "v1", index)
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    b.download_volume(b.content_tree(reg, "multi/arch:v1", "", "container", name="multi"), 8 * MiB, name="mv")
    data = tmp_path / "data"

    assert _run(tmp_path, b, data) == 0

    st = device_status(data)
    assert (_rootfs(_volume(st, "mv")) / "marker").read_bytes() == f"built for {arch}".encode()
    tree = _assert_tree_complete(st, "multi", index)
    assert tree["component_sha_list"][1] == _hex(mine.digest)
    other_layer = json.loads(other.manifest)["layers"][0]["digest"]
    assert registry.blob_gets(other_layer) == []
    assert not [r for r in registry.requests()
                if r.method != "PUT" and r.path.endswith(f"/manifests/{other.digest}")]


# -- 4: tag latching, generation bumps, pinned sha256 -----------------------------


def test_tag_is_latched_until_the_content_tree_changes(tmp_path, registry):  # noqa: F811
    img_a = build_image([Layer.from_files({"version": b"A"})])
    img_b = build_image([Layer.from_files({"version": b"B"})])
    push(registry.url, "latch/app", "v1", img_a)
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    ct = b.content_tree(reg, "latch/app:v1", "", "container", name="latched")
    vol_id = b.download_volume(ct, 8 * MiB, name="lv")
    data = tmp_path / "data"

    def manifest_requests() -> list:
        return [r for r in registry.requests()
                if r.method != "PUT" and r.path.startswith("/v2/latch/app/manifests/")]

    assert _run(tmp_path, b, data) == 0
    st = device_status(data)
    assert by_name(st["content_trees"], "latched")["sha256"] == _hex(img_a.digest)
    vol = _volume(st, "lv")
    version = _rootfs(vol) / "version"
    assert version.read_bytes() == b"A"
    inode = version.stat().st_ino

    push(registry.url, "latch/app", "v1", img_b)  # the tag moves
    seen = len(manifest_requests())
    assert _run_proc(tmp_path, b, data).returncode == 0  # same config (file written again, same bytes)
    cfg_bytes = (tmp_path / "config.json").read_bytes()
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_bytes(cfg_bytes)  # a re-written file with identical content
    assert _run_file(tmp_path / "config.json", data).returncode == 0
    st = device_status(data)
    assert by_name(st["content_trees"], "latched")["sha256"] == _hex(img_a.digest)
    assert len(manifest_requests()) == seen  # the tag was not asked for again
    assert _volume(st, "lv")["path"] == vol["path"] and version.read_bytes() == b"A"
    assert version.stat().st_ino == inode  # the volume was not rebuilt

    b.cfg.contentInfo[0].generation_count = 1  # the controller says: look again
    assert _run(tmp_path, b, data) == 0
    st = device_status(data)
    tree = _assert_tree_complete(st, "latched", img_b)
    assert tree["sha256"] == _hex(img_b.digest)
    # The volume keeps what it was made from until its own generation changes.
    assert _volume(st, "lv")["path"] == vol["path"] and version.read_bytes() == b"A"
    assert _hex(img_a.digest) not in _cas_blobs(data)  # the old image's blobs are collected
    assert _index_roots(data) == {tree["uuid"]: _hex(img_b.digest)}

    b.cfg.volumes[0].generationCount = 1
    assert _run(tmp_path, b, data) == 0
    st = device_status(data)
    new_vol = _volume(st, "lv")
    assert new_vol["generation_count"] == 1 and new_vol["uuid"] == vol_id
    assert (_rootfs(new_vol) / "version").read_bytes() == b"B"
    assert not Path(vol["path"]).exists()


def test_pinned_sha256_skips_the_tag_and_must_match(tmp_path, registry):  # noqa: F811
    img_a = build_image([Layer.from_files({"pinned": b"A"})])
    img_b = build_image([Layer.from_files({"pinned": b"B"})])
    push(registry.url, "pin/app", "v1", img_a)
    push(registry.url, "pin/app", "v1", img_b)  # the tag now names B
    wrong = "ab" * 32
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    good = b.content_tree(reg, "pin/app:v1", _hex(img_a.digest), "container", name="pinned")
    bad = b.content_tree(reg, "pin/app:v1", wrong, "container", name="wrong-pin")
    b.download_volume(good, 8 * MiB, name="pv")
    b.download_volume(bad, 8 * MiB, name="bad-pv")
    data = tmp_path / "data"

    proc = _run_proc(tmp_path, b, data)

    assert proc.returncode == 1
    st = device_status(data)
    _assert_tree_complete(st, "pinned", img_a)
    assert (_rootfs(_volume(st, "pv")) / "pinned").read_bytes() == b"A"
    assert not [r for r in registry.requests() if r.path == "/v2/pin/app/manifests/v1" and r.method != "PUT"]
    tree = by_name(st["content_trees"], "wrong-pin")
    assert tree["state"] == "ERROR"
    desc = tree["error"]["description"]
    assert wrong in desc and "manifest" in desc and "not found" in desc, desc
    bad_vol = _volume(st, "bad-pv")
    assert bad_vol["state"] == "ERROR" and wrong in bad_vol["error"]["description"]
    assert not Path(data / "volumes").joinpath(f"{bad_vol['uuid']}#0.container").exists()


# -- 5: hostile layers -----------------------------------------------------------


def test_hostile_layers_fail_their_volume_and_touch_nothing_outside(tmp_path, registry):  # noqa: F811
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret").write_bytes(b"keep me")
    up = "../../../../sentinel"  # from volumes/<tmp>/rootfs/ this climbs to tmp_path/sentinel
    bomb = Layer.from_tar(_tar(*[("file", f"zeros{i}", bytes(MiB)) for i in range(16)]))
    assert bomb.size < MiB // 4  # a small download that would unpack to 16 MiB
    symlink_layer = Layer.from_tar(_tar(("symlink", "up", up)))
    write_through = Layer.from_tar(_tar(("file", "up/pwned2", b"evil")))
    crc = bytearray(Layer.from_files({"crc": b"y" * 1000}).blob)
    crc[-8] ^= 0xFF  # the gzip trailer's CRC no longer matches (the blob digest still does)
    corrupt = Layer.raw(bytes(crc))
    hostile: dict[str, tuple[Image, str, Layer | None]] = {}

    def bad(name: str, layers: list[Layer], phrase: str, culprit: int | None = 0) -> None:
        hostile[name] = (build_image(layers), phrase, None if culprit is None else layers[culprit])

    bad("traversal", [Layer.from_tar(_tar(("file", "../../../../evil-trav", b"evil")))],
        "entry '../../../../evil-trav': '..' would climb out of the root")
    bad("symlink-write", [Layer.from_tar(_tar(("symlink", "esc", str(sentinel)), ("file", "esc/pwned", b"evil")))],
        "entry 'esc/pwned': 'esc' is a symlink; refusing to go through it")
    bad("symlink-across-layers", [symlink_layer, write_through], "'up' is a symlink; refusing", culprit=1)
    bad("hardlink-escape", [Layer.from_tar(_tar(("hardlink", "hl", f"{up}/secret")))],
        f"entry 'hl': hardlink target '{up}/secret': '..' would climb out of the root")
    bad("hardlink-via-symlink", [Layer.from_tar(_tar(("symlink", "s", str(sentinel)),
                                                    ("hardlink", "hl2", "s/secret")))],
        "entry 'hl2': hardlink target 's/secret': 's' is a symlink")
    bad("whiteout-traversal", [Layer.from_tar(_tar(("file", f"{up}/.wh.secret", b"")))],
        "'..' would climb out of the root")
    bad("bomb", [bomb], "would unpack more than 4194304 bytes (maxsizebytes)")
    bad("corrupt-gzip", [corrupt], "corrupt or truncated archive")
    not_json = b"{not json"
    hostile["config-not-json"] = (_image_with_config([Layer.from_files({"ok": b"ok"})], not_json),
                                  "image config is not valid JSON", None)
    # Contained, so these are fine: an absolute name lands inside the rootfs (as
    # containerd does), whiteouts below a symlink cannot reach what the link points
    # at, and a directory entry replaces a symlink rather than following it.
    harmless = {
        "absolute": [Layer.from_tar(_tar(("file", f"{sentinel}/evil-abs", b"inside")))],
        "whiteout-via-symlink": [Layer.from_tar(_tar(("symlink", "w", str(sentinel)))),
                                 Layer.from_tar(_tar(("file", "w/.wh.secret", b""),
                                                     ("file", "w/.wh..wh..opq", b"")))],
        "dir-replaces-symlink": [Layer.from_tar(_tar(("symlink", "rep", up))),
                                 Layer.from_tar(_tar(("dir", "rep/"), ("file", "rep/inside", b"inside")))],
        "good": [Layer.from_files({"hello": b"world"})],
    }
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    images = {**{n: image for n, (image, _, _) in hostile.items()},
              **{n: build_image(layers) for n, layers in harmless.items()}}
    for name, image in images.items():
        push(registry.url, f"hostile/{name}", "v1", image)
        ct = b.content_tree(reg, f"hostile/{name}:v1", "", "container", name=f"img-{name}")
        b.download_volume(ct, 4 * MiB, name=name)
    data = tmp_path / "data"

    proc = _run_proc(tmp_path, b, data)

    assert proc.returncode == 1
    st = device_status(data)
    for name, (_image, phrase, culprit) in hostile.items():
        vol = _volume(st, name)
        assert vol["state"] == "ERROR" and vol["path"] is None, vol
        desc = vol["error"]["description"]
        assert desc.startswith("creating volume: ") and phrase in desc, (name, desc)
        if culprit is not None:
            assert f"layer {culprit.digest}" in desc, (name, desc)
        assert by_name(st["content_trees"], f"img-{name}")["state"] == "LOADED"
    assert (_rootfs(_volume(st, "good")) / "hello").read_bytes() == b"world"
    assert (_rootfs(_volume(st, "absolute")) / str(sentinel).lstrip("/") / "evil-abs").read_bytes() == b"inside"
    w = _rootfs(_volume(st, "whiteout-via-symlink")) / "w"
    assert os.readlink(w) == str(sentinel)
    rep = _rootfs(_volume(st, "dir-replaces-symlink")) / "rep"
    assert not rep.is_symlink() and (rep / "inside").read_bytes() == b"inside"

    # Nothing outside the volumes: the sentinel is as it was, no strays anywhere.
    assert sorted(os.listdir(sentinel)) == ["secret"]
    assert (sentinel / "secret").read_bytes() == b"keep me" and (sentinel / "secret").stat().st_nlink == 1
    assert sorted(os.listdir(tmp_path)) == ["config.json", "data", "sentinel"]
    assert set(os.listdir(data)) <= DATA_DIR_ENTRIES
    assert not os.path.lexists("/evil-trav") and not os.path.lexists(f"/{sentinel.name}/evil-abs")
    strays = [p for p in data.rglob("*") if p.name in ("evil-trav", "pwned", "pwned2", "hl", "hl2")]
    assert strays == []
    # Only the created volumes exist; no half-made or temporary directories.
    made = {Path(_volume(st, n)["path"]).name for n in harmless}
    assert set(os.listdir(data / "volumes")) == made


# -- 7: a blank volume beside a container volume is an empty directory -------------


def test_blank_volume_of_a_container_app_is_an_empty_directory(tmp_path, registry):  # noqa: F811
    image = build_image([Layer.from_files({"app/bin": ("file", b"app", 0o755)})])
    push(registry.url, "blank/app", "v1", image)
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    root_vol = b.download_volume(b.content_tree(reg, "blank/app:v1", "", "container", name="img"), 8 * MiB,
                                 name="app-root")
    scratch = b.blank_volume(16 * MiB, name="scratch")
    b.blank_volume(16 * MiB, name="vm-disk")  # used by no container app: a disk image file
    b.app([root_vol, scratch], name="container-app")
    data = tmp_path / "data"

    assert _run(tmp_path, b, data) == 0

    st = device_status(data)
    vol = _volume(st, "scratch")
    rootfs = _rootfs(vol)
    assert rootfs.is_dir() and os.listdir(rootfs) == []
    assert os.listdir(Path(vol["path"])) == ["rootfs"]
    assert vol["ref_count"] == 2
    disk = _volume(st, "vm-disk")
    assert disk["state"] == "CREATED_VOLUME" and Path(disk["path"]).is_file()
    assert not disk["path"].endswith(".container")
    assert (_rootfs(_volume(st, "app-root")) / "app/bin").read_bytes() == b"app"


# -- 8: one download at a time still gets every layer --------------------------------


def test_parallel_downloads_one_completes_a_five_layer_image(tmp_path, registry):  # noqa: F811
    layers = [Layer.from_files({f"layer{i}/data": os.urandom(128 << 10)}, compression=("gzip", "zstd", None)[i % 3])
              for i in range(5)]
    image = build_image(layers)
    push(registry.url, "serial/app", "v1", image)
    b = ConfigBuilder().item("edgevol.download.parallel", "1")
    reg = b.registry(registry.host)
    b.download_volume(b.content_tree(reg, "serial/app:v1", "", "container", name="serial"), 8 * MiB, name="sv")
    data = tmp_path / "data"

    assert _run(tmp_path, b, data) == 0

    st = device_status(data)
    _assert_tree_complete(st, "serial", image)
    r = _rootfs(_volume(st, "sv"))
    assert sorted(os.listdir(r)) == [f"layer{i}" for i in range(5)]
    for layer in layers:
        assert len(registry.blob_gets(layer.digest)) == 1


# -- 9: removing a tree and its volume collects everything ------------------------------


def test_removed_container_volume_and_tree_are_collected(tmp_path, registry):  # noqa: F811
    base = Layer.from_files({"gc/base": b"gc-base"})
    img_a = build_image([base, Layer.from_files({"gc/a": b"only-a"})])
    img_b = build_image([base, Layer.from_files({"gc/b": b"only-b"})])
    push(registry.url, "gc/a", "v1", img_a)
    push(registry.url, "gc/b", "v1", img_b)
    device_id = new_id()

    def config(trees: str) -> ConfigBuilder:
        b = ConfigBuilder(device_id)
        reg = b.registry(registry.host, ds_id=reg_id)
        for t in trees:
            b.download_volume(b.content_tree(reg, f"gc/{t}:v1", "", "container", name=f"tree-{t}",
                                             ct_id=ids[t][0]), 8 * MiB, name=f"vol-{t}", vol_id=ids[t][1])
        return b

    reg_id = new_id()
    ids = {t: (new_id(), new_id()) for t in "ab"}
    data = tmp_path / "data"

    assert _run(tmp_path, config("ab"), data) == 0
    st = device_status(data)
    path_a = Path(_volume(st, "vol-a")["path"])
    blobs_a = set(by_name(st["content_trees"], "tree-a")["component_sha_list"])
    blobs_b = set(by_name(st["content_trees"], "tree-b")["component_sha_list"])
    assert _cas_blobs(data) == blobs_a | blobs_b and path_a.is_dir()

    assert _run(tmp_path, config("b"), data) == 0  # tree a and its volume leave the config
    st = device_status(data)
    assert not path_a.exists()
    assert [v["display_name"] for v in st["volumes"]] == ["vol-b"]
    assert [t["display_name"] for t in st["content_trees"]] == ["tree-b"]
    assert _cas_blobs(data) == blobs_b  # a's own blobs are gone, the shared base stays
    assert {x["sha256"]: x["ref_count"] for x in st["blobs"]} == {sha: 1 for sha in blobs_b}
    assert _index_roots(data) == {ids["b"][0]: _hex(img_b.digest)}

    assert _run(tmp_path, config(""), data) == 0  # and then everything leaves
    st = device_status(data)
    assert st["volumes"] == [] and st["content_trees"] == [] and st["blobs"] == []
    assert _cas_blobs(data) == set() and os.listdir(data / "volumes") == []
    assert _index_roots(data) == {}


# -- 10: an unreachable registry fails after bounded attempts -----------------------------


def test_unreachable_registry_fails_the_tree_after_bounded_retries(tmp_path):
    port = free_port()  # nothing listens here
    b = ConfigBuilder().fast_retries(2)
    reg = b.registry(f"127.0.0.1:{port}")
    ct = b.content_tree(reg, "down/app:v1", "", "container", name="down")
    b.download_volume(ct, 8 * MiB, name="down-vol")
    data = tmp_path / "data"

    proc = _run_proc(tmp_path, b, data)

    assert proc.returncode == 1
    st = device_status(data)
    tree = by_name(st["content_trees"], "down")
    assert tree["state"] == "ERROR", tree
    desc = tree["error"]["description"]
    assert f"127.0.0.1:{port}" in desc and "cannot connect" in desc and "gave up after 2 attempts" in desc, desc
    vol = _volume(st, "down-vol")
    assert vol["state"] == "ERROR" and "gave up after 2 attempts" in vol["error"]["description"]
    assert vol["path"] is None and os.listdir(data / "volumes") == []
