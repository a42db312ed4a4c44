import json, gzip, io
from pathlib import Path
from edgevol.tools.oci_image import Layer, build_image, build_index, push, Image, sha256_digest, _canonical_json
from edgevol.device.datastores.oci_manifest import MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST
from tests.conftest import by_name, device_status, run_cli
from tests.configs import ConfigBuilder
from tests.registry_fixture import registry  # noqa

def test_probe(tmp_path, registry):
    good = Layer.from_files({"a": b"x"})
    cfg = b"not json at all"
    man = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
           "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": sha256_digest(cfg), "size": len(cfg)},
           "layers": [good.descriptor()]}
    img = Image(_canonical_json(man), MEDIA_OCI_MANIFEST, {sha256_digest(cfg): cfg, good.digest: good.blob}, cfg)
    push(registry.url, "probe/badcfg", "v1", img)
    gz = bytearray(Layer.from_files({"b": b"y" * 1000}).blob)
    gz[-8] ^= 0xff  # break the CRC
    bad = Layer.raw(bytes(gz))
    push(registry.url, "probe/badcrc", "v1", build_image([bad]))
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    b.download_volume(b.content_tree(reg, "probe/badcfg:v1", "", "container", name="t1"), 1<<20, name="v1")
    b.download_volume(b.content_tree(reg, "probe/badcrc:v1", "", "container", name="t2"), 1<<20, name="v2")
    c = b.save(tmp_path / "config.json")
    p = run_cli("device", "run", "--data-dir", str(tmp_path/"d"), "--config", str(c), "--once", timeout=30)
    print(p.returncode, p.stderr[-3000:])
    st = device_status(tmp_path/"d")
    for v in st["volumes"]: print(v["display_name"], v["state"], v["error"])
    assert 0
