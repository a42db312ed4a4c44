"""Datastore fallback: a content tree's ``ds_ids_list`` is tried in order, and a blob two content trees
share can come from either's datastore (EVE's downloader walks the list within one attempt and keeps every
error: pkg/pillar/cmd/downloader/downloader.go:512-540; ds_ids_list wins over dsId:
pkg/pillar/cmd/zedagent/handlecontent.go:39-48). Two real HTTP servers, one of which lacks the file.
"""

from __future__ import annotations

from pathlib import Path

from edgevol.api import messages as m
from edgevol.device.datastores.oci_manifest import host_platform
from edgevol.model.parse import parse_config
from edgevol.tools.httpserve import serve
from edgevol.tools.oci_image import Layer, build_image, push
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import by_name, device_status, make_raw_image, open_guest
from tests.datastore_cases import run_once
from tests.registry_fixture import RunningRegistry, registry  # noqa: F401  (fixture)

MiB = 1 << 20


def test_ds_ids_list_falls_back_and_a_shared_blob_comes_from_either_datastore(tmp_path, datastore_dir,
                                                                              http_server) -> None:
    empty = tmp_path / "empty-datastore"
    empty.mkdir()
    dead = serve(empty)  # answers 404 for everything
    try:
        image = make_raw_image(datastore_dir / "os.raw", 2, seed=95)
        shared = make_raw_image(datastore_dir / "shared.raw", 2, seed=96)
        b = ConfigBuilder()
        bad, good = b.datastore(dead.url), b.datastore(http_server.url)
        # ds_ids_list [bad, good]; dsId names the bad one too, and must not win over the list
        ct = b.content_tree(bad, "os.raw", sha256_file(image), "raw", name="listed")
        entry = b.cfg.contentInfo[-1]
        entry.ds_ids_list.extend([bad, good])
        b.download_volume(ct, 4 * MiB, name="vol-listed")
        # two content trees with the same bytes: the first on the dead datastore, the second on the good one
        first = b.content_tree(bad, "shared.raw", sha256_file(shared), "raw", name="first")
        second = b.content_tree(good, "shared.raw", sha256_file(shared), "raw", name="second")
        b.download_volume(first, 4 * MiB, name="vol-first")
        b.download_volume(second, 4 * MiB, name="vol-second")
        state = parse_config(b.cfg)
        assert (state.content_trees[ct].datastore_id, state.content_trees[ct].fallback_datastore_ids) == (bad, (good,))
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        proc = run_once(data, b, cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "trying the next one" in proc.stderr  # the dead datastore was tried, and failed over
        st = device_status(data)
        for name, src in (("vol-listed", image), ("vol-first", shared), ("vol-second", shared)):
            vol = by_name(st["volumes"], name)
            assert vol["state"] == "CREATED_VOLUME", vol
            with open_guest(vol["path"]) as f:
                assert f.read(2 * MiB) == src.read_bytes()

        # when every datastore fails, the error names each one
        (datastore_dir / "os.raw").rename(datastore_dir / "os.raw.gone")
        other = make_raw_image(tmp_path / "other.raw", 2, seed=97)
        ct2 = b.content_tree(bad, "other.raw", sha256_file(other), "raw", name="nowhere")
        b.cfg.contentInfo[-1].ds_ids_list.extend([bad, good])
        b.download_volume(ct2, 4 * MiB, name="vol-nowhere")
        assert run_once(data, b, cfg).returncode == 1
        err = by_name(device_status(data)["content_trees"], "nowhere")["error"]["description"]
        assert "every datastore failed" in err and bad in err and good in err, err
    finally:
        dead.shutdown()


def test_a_container_tree_resolves_its_tag_and_pulls_from_the_next_registry(tmp_path,
                                                                             registry: RunningRegistry) -> None:  # noqa: F811
    """The first registry of ds_ids_list does not have the image (its namespace is empty): the tag is
    resolved and every blob pulled from the second, under that registry's own namespace."""
    os_name, arch, variant = host_platform()
    layer = Layer.from_files({"etc/": ("dir",), "etc/motd": b"from the fallback registry\n"})
    push(registry.url, "mirror/web", "v1", build_image([layer], {"Cmd": ["/bin/true"]}, os=os_name, arch=arch,
                                                        variant=variant))
    b = ConfigBuilder()
    empty, mirror = b.registry(registry.host, dpath="nothing-here"), b.registry(registry.host, dpath="mirror")
    ct = b.content_tree(empty, "web:v1", "", "container", name="web")
    b.cfg.contentInfo[-1].ds_ids_list.extend([empty, mirror])
    b.download_volume(ct, 0, name="rootfs")
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trying the next one" in proc.stderr
    st = device_status(data)
    assert by_name(st["content_trees"], "web")["state"] == "LOADED"
    vol = by_name(st["volumes"], "rootfs")
    assert vol["state"] == "CREATED_VOLUME", vol
    motd = [p for p in Path(vol["path"]).rglob("motd")]
    assert [p.read_bytes() for p in motd] == [b"from the fallback registry\n"], motd


def test_ds_ids_list_may_not_mix_a_registry_with_file_datastores(http_server) -> None:
    b = ConfigBuilder()
    web, reg = b.datastore(http_server.url), b.registry("127.0.0.1:5000")
    b.content_tree(web, "os.raw", "ab" * 32, "raw", name="mixed")
    b.cfg.contentInfo[-1].ds_ids_list.extend([web, reg])
    b.cfg.datastores.add(id=new_id(), dType=m.DsType.DsS3, fqdn="http://127.0.0.1:1", dpath="bucket")
    [err] = parse_config(b.cfg).errors
    assert "mixes a container registry" in err.message and reg in err.message, err.message


def test_layers_come_from_the_next_registry_under_its_own_namespace(tmp_path,
                                                                    registry: RunningRegistry) -> None:  # noqa: F811
    """The first registry resolves the tag but fails every blob (503 from the fault proxy): each layer is
    pulled from the second registry, which keeps the image under another namespace."""
    from edgevol.tools.faultproxy import FaultProxy, Rule
    from tests.registry_fixture import start_registry

    os_name, arch, variant = host_platform()
    image = build_image([Layer.from_files({"etc/": ("dir",), "etc/motd": b"pulled from the mirror\n"})],
                        {"Cmd": ["/bin/true"]}, os=os_name, arch=arch, variant=variant)
    mirror = start_registry(tmp_path / "mirror")
    proxy = FaultProxy(registry.host, seed=3).start()
    try:
        push(registry.url, "a/web", "v1", image)
        push(mirror.url, "b/web", "v1", image)
        failing = proxy.add(Rule("5xx", path="/blobs/sha256:", status=503))
        b = ConfigBuilder().fast_retries(2)
        first, second = b.registry(f"127.0.0.1:{proxy.port}", dpath="a"), b.registry(mirror.host, dpath="b")
        ct = b.content_tree(first, "web:v1", "", "container", name="web")
        b.cfg.contentInfo[-1].ds_ids_list.extend([first, second])
        b.download_volume(ct, 0, name="rootfs")
        data = tmp_path / "dev"
        proc = run_once(data, b, tmp_path / "config.pb")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert failing.injected >= 2  # config and layer were asked of the first registry, and refused
        assert [r for r in mirror.requests() if "/v2/b/web/blobs/" in r.path], "nothing pulled from the mirror"
    finally:
        proxy.stop()
        mirror.stop()
    vol = by_name(device_status(data)["volumes"], "rootfs")
    assert [p.read_bytes() for p in Path(vol["path"]).rglob("motd")] == [b"pulled from the mirror\n"]
