"""Every disk format EVE accepts, and read-only directory volumes (issue 12).

Each source image is built at test time by ``qemu-img convert`` from a random
raw image (an OVA with Python's tarfile around a streamOptimized VMDK and a
minimal OVF; an ISO by writing an ISO 9660 volume descriptor into one), served
by a real HTTP datastore and turned into a volume by the real agent
(``device run --once``). Rules taken from EVE:

* a volume keeps its content's format and is grown to maxsizebytes with
  ``qemu-img resize`` (pkg/pillar/volumehandlers/filehandler.go:118-124 and
  184-201; pkg/pillar/diskmetrics/diskmetrics.go:70-97: grown only when the
  image is smaller, never shrunk);
* an ISO is never grown (filehandler.go:176-182, expandableDisk) and is
  attached read-only, as a CD-ROM (pkg/pillar/cmd/domainmgr/domainmgr.go:2484-2488,
  pkg/pillar/hypervisor/kvm.go:384-390);
* a volume file is named ``<uuid>#<generation>.<format in lower case>``
  (pkg/pillar/types/volumetypes.go:173-182).

edgevol's own decisions (README, "Disk formats"): qemu-img cannot grow qcow,
vhd (vpc), vmdk or vhdx, so such a volume that must grow becomes qcow2; an
OVA's first disk always becomes a qcow2 volume; a VMDK is rewritten as
monolithicSparse because a streamOptimized one cannot be written in place.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from edgevol.device.crashpoints import CRASH_AT_ENV
from edgevol.device.volumes.qemu import FORMATS as DRIVERS, GROWABLE
from edgevol.tools.oci_image import Layer, build_image, push
from tests.conftest import EDGEVOL, by_name, device_status, make_raw_image, run_cli
from tests.configs import ConfigBuilder, sha256_file
from tests.controller_fixture import controller_factory  # noqa: F401  (fixture)
from tests.registry_fixture import registry  # noqa: F401  (fixture)

MiB = 1 << 20
GROWN = 8 * MiB
# qemu-img's driver for each content format that is not its own name
DRIVER = {"vhd": "vpc", "iso": "raw"}
OVF_DISK_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


# -- building sources -----------------------------------------------------------


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def _convert(raw: Path, out: Path, fmt: str, *opts: str) -> Path:
    proc = _qemu_img("convert", "-f", "raw", "-O", DRIVER.get(fmt, fmt), *opts, str(raw), str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def _info(path: Path | str, fmt: str) -> dict:
    proc = _qemu_img("info", "-U", "--output=json", "-f", DRIVER.get(fmt, fmt), str(path))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _same_guest_bytes(src_raw: Path, volume: Path | str, fmt: str) -> bool:
    """``qemu-img compare``: the volume reads as the source, and as zeros past the source's end."""
    proc = _qemu_img("compare", "-U", "-f", "raw", "-F", DRIVER.get(fmt, fmt), str(src_raw), str(volume))
    return proc.returncode == 0


def _iso(path: Path, mib: int = 2, seed: int = 9) -> Path:
    """Random sectors with an ISO 9660 primary volume descriptor at 32 KiB and a set terminator after it."""
    make_raw_image(path, mib, seed)
    with open(path, "r+b") as f:
        f.seek(32 * 1024)
        f.write(b"\x01CD001\x01".ljust(2048, b"\x00"))
        f.write(b"\xffCD001\x01".ljust(2048, b"\x00"))
    return path


def _ovf(href: str | None, capacity: int = 3 * MiB) -> bytes:
    """A minimal OVF 1.x descriptor naming one disk file (none when ``href`` is None)."""
    refs = f'<File ovf:id="file1" ovf:href="{href}"/>' if href else ""
    disks = (f'<Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{capacity}" '
             f'ovf:format="{OVF_DISK_FORMAT}"/>') if href else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
            f'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">\n'
            f'  <References>{refs}</References>\n'
            f'  <DiskSection><Info>Virtual disk information</Info>{disks}</DiskSection>\n'
            f'  <VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>\n'
            f'</Envelope>\n').encode()


def _ova(path: Path, entries: list[tuple[str, bytes | Path | tuple[str, str]]]) -> Path:
    """A tar of ``(name, content)``: bytes, a file to copy, or ``("symlink", target)``."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tf.addfile(info)
            elif isinstance(content, Path):
                info.size = content.stat().st_size
                with open(content, "rb") as f:
                    tf.addfile(info, f)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return path


def _admin(ctrl, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEVOL_")}
    return subprocess.run([*EDGEVOL, "admin", "--server", ctrl.url, "--controller-dir", str(ctrl.data_dir), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def _run_once(tmp_path: Path, b: ConfigBuilder, data: Path, crash_at: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    cfg = b.save(tmp_path / "config.json")
    if crash_at is None:
        return run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once")
    env = dict(os.environ, **{CRASH_AT_ENV: crash_at})
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=120, env=env)


def _temps(data: Path) -> list[str]:
    return [p.name for p in (data / "volumes").iterdir() if p.name.startswith(".tmp-")]


def _add(b: ConfigBuilder, ds: str, datastore_dir: Path, src: Path, fmt: str, name: str) -> str:
    """A content tree for ``src``, which must be in the datastore directory."""
    assert src.parent == datastore_dir
    return b.content_tree(ds, src.name, sha256_file(src), fmt, name=name)


# -- every format ------------------------------------------------------------------


def test_every_format_becomes_a_volume_with_the_source_bytes(tmp_path, datastore_dir, http_server):
    src = make_raw_image(tmp_path / "src.raw", 3, seed=5)
    images = {fmt: _convert(src, datastore_dir / f"s.{fmt}", fmt) for fmt in ("qcow", "vhd", "vmdk", "vhdx")}
    stream_vmdk = _convert(src, tmp_path / "so.vmdk", "vmdk", "-o", "subformat=streamOptimized")
    so_in_store = datastore_dir / "so.vmdk"
    so_in_store.write_bytes(stream_vmdk.read_bytes())
    ova = _ova(datastore_dir / "appliance.ova", [
        ("appliance.ovf", _ovf("appliance-disk1.vmdk")), ("appliance.mf", b"SHA256(appliance.ovf)= x\n"),
        ("appliance-disk1.vmdk", stream_vmdk)])
    iso = _iso(datastore_dir / "cd.iso")

    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    for fmt, image in images.items():
        ct = _add(b, ds, datastore_dir, image, fmt, fmt)
        b.download_volume(ct, GROWN, name=f"{fmt}-grown")
        b.download_volume(ct, 0, name=f"{fmt}-kept")
        # smaller than the image, as Eden sizes its v-qcow (tests/volume/testdata/volumes_test.txt:13): no growth
        b.download_volume(ct, 560, name=f"{fmt}-small")
    b.download_volume(_add(b, ds, datastore_dir, so_in_store, "vmdk", "vmdk-stream"), 0, name="vmdk-stream-kept")
    ct_ova = _add(b, ds, datastore_dir, ova, "ova", "ova")
    b.download_volume(ct_ova, GROWN, name="ova-grown")
    b.download_volume(ct_ova, 0, name="ova-kept")
    b.download_volume(_add(b, ds, datastore_dir, iso, "iso", "iso"), GROWN, name="iso", readonly=False)
    data = tmp_path / "dev"

    proc = _run_once(tmp_path, b, data)
    assert proc.returncode == 0, proc.stderr[-3000:]

    st = device_status(data)
    vols = {v["display_name"]: v for v in st["volumes"]}
    assert {v["state"] for v in vols.values()} == {"CREATED_VOLUME"}, vols
    for fmt, image in images.items():
        # growth needed: qemu-img cannot grow these formats, so the volume is a qcow2 grown to maxsizebytes
        grown = vols[f"{fmt}-grown"]
        assert grown["path"].endswith(".qcow2") and grown["format"] == "qcow2", grown
        assert _info(grown["path"], "qcow2")["virtual-size"] == GROWN
        assert _same_guest_bytes(src, grown["path"], "qcow2"), fmt
        # no growth needed: the volume keeps the content's format and size, named as EVE names it
        for kept in (vols[f"{fmt}-kept"], vols[f"{fmt}-small"]):
            assert kept["path"].endswith(f".{fmt}") and kept["format"] == fmt, kept
            assert _info(kept["path"], fmt)["virtual-size"] == _info(image, fmt)["virtual-size"]
            assert _same_guest_bytes(src, kept["path"], fmt), fmt
            assert stat.S_IMODE(os.stat(kept["path"]).st_mode) == 0o644 and kept["readonly"] is False
    # a streamOptimized VMDK is kept as VMDK, rewritten so that a guest can write to it
    so = vols["vmdk-stream-kept"]
    assert so["format"] == "vmdk" and _same_guest_bytes(src, so["path"], "vmdk")
    assert _info(so["path"], "vmdk")["format-specific"]["data"]["create-type"] == "monolithicSparse"
    write = subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x55 0 64k", so["path"]],
                           capture_output=True, text=True)
    assert write.returncode == 0 and "failed" not in write.stdout + write.stderr, write
    # the OVA's disk, grown or not, is a qcow2 volume holding the disk's bytes
    for name, size in (("ova-grown", GROWN), ("ova-kept", 3 * MiB)):
        v = vols[name]
        assert v["format"] == "qcow2" and _info(v["path"], "qcow2")["virtual-size"] == size, v
        assert _same_guest_bytes(src, v["path"], "qcow2"), name
    # the ISO: same bytes, not grown, read-only though the config said writable
    cd = vols["iso"]
    assert cd["format"] == "iso" and cd["path"].endswith(".iso")
    assert Path(cd["path"]).read_bytes() == iso.read_bytes()
    assert stat.S_IMODE(os.stat(cd["path"]).st_mode) == 0o444 and cd["readonly"] is True
    assert cd["max_size_bytes"] == GROWN  # the configured value, as for every volume
    # the content trees report the format they were declared with
    assert {c["display_name"]: c["format"] for c in st["content_trees"]} == {
        "qcow": "qcow", "vhd": "vhd", "vmdk": "vmdk", "vhdx": "vhdx", "vmdk-stream": "vmdk", "ova": "ova",
        "iso": "iso"}
    assert _temps(data) == []
    table = run_cli("device", "status", "--data-dir", str(data), check=True).stdout
    assert "FORMAT" in table and " vhdx " in table and " iso " in table


def test_qemu_img_grows_only_the_formats_edgevol_grows_in_place(tmp_path):
    """The decision above rests on which drivers ``qemu-img resize`` can grow (qemu-img 7.2: qcow2 and raw);
    a qemu-img that learns more should make us revisit it, so check the installed one."""
    src = make_raw_image(tmp_path / "src.raw", 1)
    growable = []
    for drv in DRIVERS:
        img = _convert(src, tmp_path / f"img.{drv}", drv)
        if _qemu_img("resize", "-f", drv, str(img), str(2 * MiB)).returncode == 0:
            growable.append(drv)
    assert tuple(growable) == GROWABLE


# -- refusals ------------------------------------------------------------------------


def _all_refused(tmp_path: Path, datastore_dir: Path, url: str,
                 volumes: list[tuple[Path, str, str, int]]) -> dict:
    """Run the agent on one DOWNLOAD volume per ``(image, declared format, name, maxsizebytes)``, every one of
    which must fail, leaving nothing in the volumes directory (not even a temp file); the device's status."""
    b = ConfigBuilder()
    ds = b.datastore(url)
    for image, fmt, name, size in volumes:
        b.download_volume(_add(b, ds, datastore_dir, image, fmt, name), size, name=name)
    data = tmp_path / "dev"
    assert _run_once(tmp_path, b, data).returncode == 1
    assert os.listdir(data / "volumes") == []
    return device_status(data)


def _failed(st: dict, name: str) -> str:
    """The volume's error, after checking it is in ERROR with no file."""
    v = by_name(st["volumes"], name)
    assert v["state"] == "ERROR" and v["path"] is None, v
    return v["error"]["description"]


def test_a_format_lie_is_an_error_on_the_volume(tmp_path, datastore_dir, http_server):
    src = make_raw_image(tmp_path / "src.raw", 2, seed=3)
    qcow2 = _convert(src, datastore_dir / "lie.vmdk", "qcow2")  # declared VMDK, really qcow2
    vmdk = _convert(src, datastore_dir / "lie.vhdx", "vmdk")  # declared VHDX, really vmdk
    noiso = make_raw_image(datastore_dir / "lie.iso", 1, seed=4)  # declared ISO, no volume descriptor
    st = _all_refused(tmp_path, datastore_dir, http_server.url, [
        (qcow2, "vmdk", "as-vmdk", GROWN), (vmdk, "vhdx", "as-vhdx", GROWN), (noiso, "iso", "as-iso", 0)])
    assert "is not a valid vmdk image: no sparse VMDK header" in _failed(st, "as-vmdk")
    assert "is not a valid vhdx image" in _failed(st, "as-vhdx")
    assert "is not a valid iso image: no ISO 9660 or UDF volume descriptor" in _failed(st, "as-iso")
    # the download itself was fine: the content trees are loaded
    assert {c["state"] for c in st["content_trees"]} == {"LOADED"}


def test_a_vmdk_naming_host_files_is_refused(tmp_path, datastore_dir, http_server):
    """A VMDK descriptor can name any file as an extent; a guest would read the host's file."""
    secret = tmp_path / "host-secret.bin"
    secret.write_bytes((b"host secret!" * MiB)[:MiB])
    flat = datastore_dir / "flat.vmdk"
    flat.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                    f'createType="monolithicFlat"\n\nRW 2048 FLAT "{secret}" 0\n')
    # a sparse header of capacity 0 makes qemu read its embedded descriptor instead
    header = bytearray(_convert(make_raw_image(tmp_path / "s.raw", 1), tmp_path / "s.vmdk", "vmdk").read_bytes())
    header[12:20] = bytes(8)
    deferred = datastore_dir / "deferred.vmdk"
    deferred.write_bytes(bytes(header))
    st = _all_refused(tmp_path, datastore_dir, http_server.url,
                      [(flat, "vmdk", "flat", 0), (deferred, "vmdk", "deferred", 0)])
    assert "is a VMDK descriptor, which names other files as extents; refused for safety" in _failed(st, "flat")
    assert "is a vmdk whose header defers to a descriptor; refused for safety" in _failed(st, "deferred")


HOSTILE_OVAS = {
    # name: (entries, expected error)
    # hostile entries after a good disk: the whole package is refused, not just the entry
    "traversal": ([("x.ovf", _ovf("disk.vmdk")), ("disk.vmdk", "DISK"), ("../../escape.vmdk", b"x" * 512)],
                  "OVA entry '../../escape.vmdk': '..' would climb out of the root; refused"),
    "absolute": ([("x.ovf", _ovf("disk.vmdk")), ("disk.vmdk", "DISK"), ("/etc/cron.d/evil", b"* * * * *\n")],
                 "OVA entry '/etc/cron.d/evil' is an absolute path; refused"),
    "symlink": ([("x.ovf", _ovf("disk.vmdk")), ("disk.vmdk", ("symlink", "/etc/shadow"))],
                "OVA entry 'disk.vmdk' is a symlink; an OVA holds only regular files; refused"),
    "no-disk": ([("x.ovf", _ovf(None)), ("disk.vmdk", "DISK")],
                "the OVF names no disk (no DiskSection/Disk with a fileRef)"),
    "missing-disk": ([("x.ovf", _ovf("other.vmdk")), ("disk.vmdk", "DISK")],
                     "the OVF names disk file 'other.vmdk', which is not in the OVA"),
    "no-ovf": ([("disk.vmdk", "DISK")], "the OVA has no .ovf descriptor"),
    "entities": ([("x.ovf", b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaa">]><e>&a;</e>'),
                  ("disk.vmdk", "DISK")], "the OVF descriptor declares a DTD or entities; refused"),
    "disk-not-vmdk": ([("x.ovf", _ovf("disk.vmdk")), ("disk.vmdk", "QCOW2")],
                      ": disk 'disk.vmdk' is not a valid vmdk image: no sparse VMDK header"),
}


def test_a_hostile_ova_is_refused(tmp_path, datastore_dir, http_server):
    src = make_raw_image(tmp_path / "src.raw", 2, seed=11)
    disks = {"DISK": _convert(src, tmp_path / "d.vmdk", "vmdk", "-o", "subformat=streamOptimized"),
             "QCOW2": _convert(src, tmp_path / "d.qcow2", "qcow2")}
    volumes = []
    for case, (entries, _) in HOSTILE_OVAS.items():
        resolved = [(n, disks[c] if isinstance(c, str) else c) for n, c in entries]
        volumes.append((_ova(datastore_dir / f"{case}.ova", resolved), "ova", case, GROWN))
    (datastore_dir / "not-a-tar.ova").write_bytes(src.read_bytes()[:4096])  # random bytes
    volumes.append((datastore_dir / "not-a-tar.ova", "ova", "not-a-tar", 0))

    st = _all_refused(tmp_path, datastore_dir, http_server.url, volumes)  # nothing written, no temp file left
    for case, (_, expected) in HOSTILE_OVAS.items():
        assert expected in _failed(st, case), case
    assert "the OVA is not a valid tar archive" in _failed(st, "not-a-tar")
    assert not (tmp_path / "escape.vmdk").exists() and not (tmp_path / "dev" / "escape.vmdk").exists()


def test_an_ova_volume_killed_midway_leaves_no_temp_files(tmp_path, datastore_dir, http_server):
    src = make_raw_image(tmp_path / "src.raw", 2, seed=13)
    disk = _convert(src, tmp_path / "d.vmdk", "vmdk", "-o", "subformat=streamOptimized")
    ova = _ova(datastore_dir / "a.ova", [("a.ovf", _ovf("d.vmdk")), ("d.vmdk", disk)])
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    b.download_volume(_add(b, ds, datastore_dir, ova, "ova", "a"), GROWN, name="a")
    data = tmp_path / "dev"

    killed = _run_once(tmp_path, b, data, crash_at="volume.temp.written")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(_temps(data)) == 2  # the disk taken out of the OVA and the volume being made
    again = _run_once(tmp_path, b, data)
    assert again.returncode == 0, again.stderr[-3000:]
    v = by_name(device_status(data)["volumes"], "a")
    assert v["state"] == "CREATED_VOLUME" and _same_guest_bytes(src, v["path"], "qcow2")
    assert _temps(data) == [] and os.listdir(data / "volumes") == [Path(v["path"]).name]


# -- read-only directory volumes ---------------------------------------------------


def _write_bits(top: Path) -> list[str]:
    """Everything under ``top`` (itself included) that has a write permission bit; symlinks skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for p in [Path(dirpath)] + [Path(dirpath) / n for n in dirnames + filenames]:
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o222:
                found.append(str(p.relative_to(top)))
    return sorted(set(found))


def test_a_read_only_directory_volume(tmp_path, registry):  # noqa: F811
    layer = Layer.from_files({"etc/": ("dir",), "etc/app.conf": ("file", b"port=80\n", 0o644),
                              "bin/": ("dir",), "bin/tool": ("file", b"#!/bin/sh\n", 0o755),
                              "srv/": ("dir", 0o777), "srv/link": ("symlink", "../etc/app.conf")})
    push(registry.url, "apps/ro", "v1", build_image([layer], {"Cmd": ["/bin/tool"]}))
    b = ConfigBuilder()
    reg = b.registry(registry.host)
    ct = b.content_tree(reg, "apps/ro:v1", "", "container", name="image")
    b.download_volume(ct, 64 * MiB, name="ro", readonly=True)
    b.download_volume(ct, 64 * MiB, name="rw")
    data = tmp_path / "dev"

    proc = _run_once(tmp_path, b, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    ro, rw = by_name(st["volumes"], "ro"), by_name(st["volumes"], "rw")
    assert ro["readonly"] is True and ro["format"] == "container"
    root = Path(ro["path"])
    # an OCI runtime bundle config that has a runtime mount the rootfs read-only ...
    assert json.loads((root / "config.json").read_text()) == {
        "ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True}}
    # ... and no write permission left on anything, the symlink untouched
    assert _write_bits(root) == []
    assert stat.S_IMODE(os.stat(root / "rootfs/bin/tool").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(root / "rootfs/srv").st_mode) == 0o555
    assert os.readlink(root / "rootfs/srv/link") == "../etc/app.conf"
    assert (root / "rootfs/etc/app.conf").read_bytes() == b"port=80\n"
    # the writable volume of the same image is as before: no runtime config, write bits kept
    assert not (Path(rw["path"]) / "config.json").exists()
    assert stat.S_IMODE(os.stat(Path(rw["path"]) / "rootfs/srv").st_mode) == 0o777

    # a read-only volume is deleted like any other once the config drops it
    b.cfg.volumes.pop(0)
    assert _run_once(tmp_path, b, data).returncode == 0
    assert not root.exists() and Path(rw["path"]).exists()


# -- the controller -----------------------------------------------------------------


def test_the_admin_cli_and_api_take_every_format(controller_factory):  # noqa: F811
    ctrl = controller_factory(None)
    assert _admin(ctrl, "device", "create", "dev1", "--serial", "SN-1").returncode == 0
    assert _admin(ctrl, "datastore", "create", "http", "--type", "DsHttp",
                  "--fqdn", "http://127.0.0.1:1").returncode == 0
    assert _admin(ctrl, "datastore", "create", "reg", "--type", "DsContainerRegistry",
                  "--fqdn", "docker://127.0.0.1:5000").returncode == 0
    names = ["RAW", "QCOW", "QCOW2", "VHD", "VMDK", "OVA", "VHDX", "ISO"]
    for i, name in enumerate(names):
        proc = _admin(ctrl, "content-tree", "create", f"t-{name}", "--device", "dev1", "--datastore", "http",
                      "--url", f"image.{name.lower()}", "--format", name.lower(), "--sha256", f"{i:064x}")
        assert proc.returncode == 0, proc.stderr
    proc = _admin(ctrl, "content-tree", "create", "t-CONTAINER", "--device", "dev1", "--datastore", "reg",
                  "--url", "library/alpine:3.19", "--format", "container")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(_admin(ctrl, "content-tree", "list", "--device", "dev1", "-o", "json").stdout)
    assert sorted(t["format_name"] for t in listed) == sorted(names + ["CONTAINER"])
    # a format the device does not take is refused by the CLI (PVC: Kubernetes volumes) ...
    proc = _admin(ctrl, "content-tree", "create", "t-pvc", "--device", "dev1", "--datastore", "http",
                  "--url", "x", "--format", "PVC", "--sha256", "f" * 64)
    assert proc.returncode == 2 and "PVC" in proc.stderr
    # ... and by the admin API, in the device parser's words
    import httpx

    token = (ctrl.data_dir / "admin.token").read_text().strip()
    r = httpx.post(f"{ctrl.url}/api/v1/devices/dev1/content-trees", headers={"Authorization": f"Bearer {token}"},
                   json={"name": "t-pvc", "datastore": "http", "url": "x", "format": "PVC", "sha256": "f" * 64})
    assert r.status_code in (400, 422) and "format PVC is not supported" in r.text, r.text
