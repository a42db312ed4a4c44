"""Container content trees from a real registry, unpacked into directory volumes."""

from __future__ import annotations

import os
from pathlib import Path

from edgevol.tools.oci_image import Layer, build_image, build_index, push
from tests.conftest import by_name, device_status, run_cli
from tests.configs import ConfigBuilder
from tests.registry_fixture import registry  # noqa: F401  (fixture)

MiB = 1 << 20


def _run(tmp_path: Path, b: ConfigBuilder, data: Path) -> int:
    cfg = b.save(tmp_path / "config.json")
    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once")
    return proc.returncode


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
