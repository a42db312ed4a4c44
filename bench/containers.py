"""Benchmarks 4 and 5: a container image from a loopback OCI registry, pulled and unpacked.

The image is generated (``datagen.image_layers``), pushed once to Debian's
``docker-registry`` started the way the tests start it, and then fetched by
edgevol and by the tools people use for the same job: ``skopeo copy`` for the
pull, ``umoci unpack`` and plain ``tar -xzf`` per layer for the rootfs. The
baselines read the very bytes edgevol read (the same registry, the same CAS
blobs), and the result is checked once against tar's before any figure is
reported, since a fast wrong rootfs would be worth nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.cases import RSS_TARGET, Env, display_cmd, edgevol_cmd, log_span, net_row, spans_row
from bench.datagen import LayerTar, image_layers
from bench.harness import Runs, run_timed
from bench.report import Table, fmt_bytes, fmt_mb, fmt_ratio, fmt_s, runs_cells
from edgevol.device.datastores.oci_manifest import MEDIA_OCI_LAYER_GZIP
from edgevol.tools.oci_image import Layer, build_image, push
from tests.configs import ConfigBuilder, sha256_file
from tests.registry_fixture import RunningRegistry, start_registry

__all__ = ["PublishedImage", "published_image", "pull_image", "tree_manifest", "unpack_rootfs"]

REPOSITORY = "bench/rootfs"
TAG = "v1"
PARALLEL_ITEM = "edgevol.download.parallel"
PARALLEL_DEFAULT = 2  # edgevol's default for PARALLEL_ITEM; that run sets no config item at all
PARALLEL_OTHERS = (1, 4)


@dataclass(frozen=True)
class PublishedImage:
    """The image as the registry holds it, and what the report says about it."""

    registry: RunningRegistry
    layers: list[LayerTar]
    layer_digests: list[str]  # hex, in manifest order
    blobs: dict[str, int]  # hex digest -> size: manifest, config and layers, all that a pull fetches
    push_seconds: float

    @property
    def reference(self) -> str:
        return f"{self.registry.host}/{REPOSITORY}:{TAG}"

    @property
    def pull_bytes(self) -> int:
        return sum(self.blobs.values())

    def describe(self) -> str:
        files = sum(t.files for t in self.layers)
        content = sum(t.file_bytes for t in self.layers)
        return (f"{len(self.layers)} gzip layers, {fmt_bytes(self.pull_bytes)} to fetch (manifest, config, layers), "
                f"{fmt_bytes(sum(t.tar_bytes for t in self.layers))} of tar, {files} regular files of "
                f"{fmt_bytes(content)} in all (most of it random, so gzip saves little)")


@contextmanager
def published_image(env: Env, total: int) -> Iterator[PublishedImage]:
    """Generate the layers, start a registry, push the image; stop the registry afterwards."""
    layers = image_layers(env.out / "layers", total)
    registry = start_registry(env.out / "registry")
    try:
        parts = [Layer.from_path(t.path, media_type=MEDIA_OCI_LAYER_GZIP, diff_id=t.diff_id) for t in layers]
        image = build_image(parts, {"Cmd": ["/bin/sh"]})
        t0 = time.perf_counter()
        push(registry.url, REPOSITORY, TAG, image)
        pushed = time.perf_counter() - t0
        blobs = {image.digest: image.size}
        blobs.update({d: len(b) if isinstance(b, bytes) else b.stat().st_size for d, b in image.blobs.items()})
        for t in layers:
            t.path.unlink()  # the registry keeps its own copy
        yield PublishedImage(registry, layers, [p.digest.removeprefix("sha256:") for p in parts],
                             {d.removeprefix("sha256:"): n for d, n in blobs.items()}, pushed)
    finally:
        registry.stop()


def _tree_config(image: PublishedImage, parallel: int | None = None) -> ConfigBuilder:
    b = ConfigBuilder()
    if parallel is not None:
        b.item(PARALLEL_ITEM, str(parallel))
    reg = b.registry(image.registry.host)
    b.content_tree(reg, f"{REPOSITORY}:{TAG}", "", "container", name="image")
    return b


def _skopeo(image: PublishedImage, layout: Path) -> str:
    return (f"skopeo copy --src-tls-verify=false docker://{image.reference} "
            f"oci:{shlex.quote(str(layout))}:{TAG}")


def _check_blobs(blob_dir: Path, image: PublishedImage, *, hash_them: bool, who: str) -> None:
    """Every blob of the image is there (and, once, has the right sha256)."""
    for hexd, size in image.blobs.items():
        path = blob_dir / hexd
        if not path.is_file() or path.stat().st_size != size:
            raise RuntimeError(f"{who}: blob {hexd} missing or of the wrong size in {blob_dir}")
        if hash_them and sha256_file(path) != hexd:
            raise RuntimeError(f"{who}: blob {hexd} has different content")


# -- 4. pull ---------------------------------------------------------------------


def pull_image(env: Env, image: PublishedImage) -> Table:
    settings = [PARALLEL_DEFAULT, *PARALLEL_OTHERS]
    configs = {p: _tree_config(image, None if p == PARALLEL_DEFAULT else p).save(env.out / f"pull-p{p}.pb")
               for p in settings}
    layout = env.out / "work" / "skopeo-layout"
    layout.parent.mkdir(parents=True, exist_ok=True)
    baselines = [("skopeo", _skopeo(image, layout), "skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG "
                  "oci:DIR:TAG"),
                 ("skopeo-sync", _skopeo(image, layout) + " && sync", "skopeo copy … oci:DIR:TAG && sync")]
    ev = {p: Runs() for p in settings}
    spans: dict[int, list[float]] = {p: [] for p in settings}
    base = {name: Runs() for name, _, _ in baselines}
    refs: list[float] = []
    for i in range(env.reps):
        refs.append(env.run_empty(f"pull-{i}"))
        for p, cfg in configs.items():
            data = env.scratch("pull")
            log = env.log(f"pull-edgevol-p{p}-{i}")
            ev[p].add(run_timed(edgevol_cmd(data, cfg), log))
            span = log_span(log, "config applied", "blob loaded")
            if span is not None:
                spans[p].append(span)
            _check_blobs(data / "cas" / "blobs" / "sha256", image, hash_them=i == 0, who="edgevol")
            shutil.rmtree(data)
        for name, cmd, _ in baselines:
            shutil.rmtree(layout, ignore_errors=True)
            base[name].add(run_timed([cmd], env.log(f"pull-{name}-{i}"), shell=True))
            _check_blobs(layout / "blobs" / "sha256", image, hash_them=i == 0, who="skopeo")
        shutil.rmtree(layout)

    size = image.pull_bytes
    t = Table(f"4. Pull a {len(image.layers)}-layer container image from a loopback registry",
              f"The image: {image.describe()}. It sits in Debian's `docker-registry` (distribution 2.8, "
              "filesystem storage) on 127.0.0.1. edgevol gets a config holding just the content tree "
              f"(`{REPOSITORY}:{TAG}` on a `DsContainerRegistry` datastore) and is timed until `device run --once` "
              "exits: tag resolved, manifest, config and every layer downloaded, sha256-verified, fsynced and "
              "committed to its CAS (an OCI image layout). `skopeo copy` fetches the same image into a fresh OCI "
              f"layout (it verifies digests too, but does not fsync). Downloads in parallel: `{PARALLEL_ITEM}` "
              f"= {PARALLEL_DEFAULT} (default, no config item), then 1 and 4. MB/s = bytes fetched ÷ time.")
    nets: dict[int, float] = {}
    for p in settings:
        label = f"`{PARALLEL_ITEM}={p}`" + (" (default)" if p == PARALLEL_DEFAULT else "")
        main = base["skopeo"].median
        t.rows.append(runs_cells(f"{display_cmd('D', f'pull-p{p}.pb')}, {label}", ev[p], size,
                                 ratio=f"{fmt_ratio(ev[p].median, main)} of skopeo"))
        row, nets[p] = net_row(f"edgevol, {label}, net of start-up", ev[p].seconds, refs, size)
        row[-1] = f"{fmt_ratio(nets[p], main)} of skopeo"
        t.rows.append(row)
        if spans[p]:
            t.rows.append(spans_row(f"edgevol, {label}, agent log: `config applied` → last `blob loaded`",
                                    spans[p], size))
    d = PARALLEL_DEFAULT
    for name, _, label in baselines:
        runs = base[name]
        t.rows.append(runs_cells(label, runs, size, ratio=f"{fmt_ratio(ev[d].median, runs.median)} gross, "
                                                           f"{fmt_ratio(nets[d], runs.median)} net"))
    peak = max(r.peak_rss for r in ev.values())
    verdict = "meets" if peak < RSS_TARGET else "MISSES"
    t.notes.append(f"Peak RSS of edgevol while pulling: **{fmt_mb(peak)} MB** (max over every run above; target "
                   f"< 100 MB: {verdict} it; {fmt_mb(env.startup.peak_rss)} MB for an agent with nothing to do). "
                   f"skopeo peaks at {fmt_mb(base['skopeo'].peak_rss)} MB.")
    t.notes.append(f"Start-up reference runs in this benchmark: {', '.join(f'{r:.3f}' for r in refs)} s. The ratio "
                   "column of edgevol rows compares with plain `skopeo copy` (no sync).")
    t.notes.append("Every run's result was checked: all blobs present with the right size in edgevol's CAS and in "
                   "skopeo's layout, and in the first repetition re-hashed (sha256 of each file = its name).")
    t.notes.append(f"Pushing the image once beforehand (edgevol.tools.oci_image.push, 16 MiB PATCH chunks) took "
                   f"{image.push_seconds:.1f} s; not part of any figure.")
    env.summary.append(
        f"Pull of a {len(image.layers)}-layer {fmt_bytes(size)} image from a loopback registry: edgevol "
        f"{fmt_s(nets[d])} s net of start-up ({fmt_s(ev[d].median)} s whole process) versus "
        f"{fmt_s(base['skopeo'].median)} s for `skopeo copy` ({fmt_ratio(nets[d], base['skopeo'].median)} net) and "
        f"{fmt_s(base['skopeo-sync'].median)} s with `sync`; parallel downloads 1 / 2 / 4: "
        f"{' / '.join(fmt_s(nets[p]) for p in sorted(settings))} s net; peak RSS {fmt_mb(peak)} MB.")
    return t


# -- 5. rootfs unpack -------------------------------------------------------------


@dataclass
class TreeFacts:
    """What a file tree holds, and a file-by-file manifest to compare trees by."""

    manifest: dict[str, tuple[object, ...]]
    files: int = 0  # regular files (inodes), not names
    file_bytes: int = 0
    dirs: int = 0
    symlinks: int = 0
    extra_links: int = 0  # names beyond the first of a hardlinked file
    disk: int = 0  # st_blocks × 512, hardlinks once


def tree_manifest(root: Path) -> TreeFacts:
    """Path -> (kind, mode, mtime, size, sha256 or link target) for everything under ``root``.

    Owners are left out: umoci's --rootless mode maps them on purpose.
    """
    facts = TreeFacts({})
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            perm = stat.S_IMODE(st.st_mode)
            again = (st.st_dev, st.st_ino) in seen  # a further name of a hardlinked file: counted once
            if again:
                facts.extra_links += 1
            else:
                seen.add((st.st_dev, st.st_ino))
                facts.disk += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                facts.dirs += 1
                facts.manifest[rel] = ("dir", perm, st.st_mtime_ns)
            elif stat.S_ISLNK(st.st_mode):
                facts.symlinks += 1
                facts.manifest[rel] = ("symlink", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                if not again:
                    facts.files += 1
                    facts.file_bytes += st.st_size
                facts.manifest[rel] = ("file", perm, st.st_mtime_ns, st.st_size, sha256_file(p), st.st_nlink)
            else:
                facts.manifest[rel] = ("other", st.st_mode, st.st_mtime_ns)
    return facts


def _differences(a: TreeFacts, b: TreeFacts, limit: int = 5) -> list[str]:
    out = []
    for path in sorted(set(a.manifest) | set(b.manifest)):
        if a.manifest.get(path) != b.manifest.get(path):
            out.append(f"{path}: {a.manifest.get(path)} vs {b.manifest.get(path)}")
            if len(out) >= limit:
                break
    return out


def _only_rootfs(data: Path) -> Path:
    found = [p for p in (data / "volumes").iterdir() if p.name.endswith(".container")]
    if len(found) != 1:
        raise RuntimeError(f"expected one directory volume in {data / 'volumes'}, found {found}")
    return found[0] / "rootfs"


def unpack_rootfs(env: Env, image: PublishedImage) -> Table:
    b = _tree_config(image)
    load_cfg = b.save(env.out / "unpack-load.pb")
    ct = b.cfg.contentInfo[0].uuid
    content = sum(t.file_bytes for t in image.layers)
    b.download_volume(ct, 4 * content, name="rootfs")  # maxsizebytes: room to spare, no resize involved
    vol_cfg = b.save(env.out / "unpack-volume.pb")

    layout = env.out / "work" / "oci-layout"  # umoci's input: what skopeo copied, as in benchmark 4
    shutil.rmtree(layout, ignore_errors=True)
    layout.parent.mkdir(parents=True, exist_ok=True)  # skopeo makes the layout, not its parent
    copied = subprocess.run(["bash", "-c", _skopeo(image, layout)], capture_output=True, text=True)
    if copied.returncode != 0:
        raise RuntimeError(f"skopeo copy failed:\n{copied.stderr[-2000:]}")
    umoci = "umoci unpack --rootless --image {layout}:{tag} {x}"
    tar_loop = "mkdir {x} && for L in {layers}; do tar -xzf \"$L\" -C {x} || exit 1; done"
    # (name, command template, label, where the rootfs lands relative to X, or None: not compared)
    specs = [("umoci", umoci, "umoci unpack --rootless --image DIR:TAG X", "rootfs"),
             ("umoci-sync", umoci + " && sync", "umoci unpack … && sync", None),
             ("tar", tar_loop, f"mkdir X; for L in {len(image.layers)} layers; do tar -xzf L -C X; done", "."),
             ("tar-sync", tar_loop + " && sync", "… tar loop … && sync", None)]
    noop, ev = Runs(), Runs()
    inner: list[float] = []
    base = {name: Runs() for name, *_ in specs}
    facts: dict[str, TreeFacts] = {}
    # Nothing is deleted until every run is done: on this machine's ext4 (no journal) creating files right
    # after thousands were deleted is several times slower (the kernel skips recently freed inodes one by
    # one), which would bill one run's clean-up to the next.
    keep = env.scratch("unpack")
    for i in range(env.reps):
        data = keep / f"edgevol-{i}"
        run_timed(edgevol_cmd(data, load_cfg), env.log(f"unpack-load-{i}"))
        noop.add(run_timed(edgevol_cmd(data, load_cfg), env.log(f"unpack-noop-{i}")))
        log = env.log(f"unpack-volume-{i}")
        ev.add(run_timed(edgevol_cmd(data, vol_cfg), log))
        span = log_span(log, "config applied", "volume created")
        if span is not None:
            inner.append(span)
        if i == 0:
            facts["edgevol"] = tree_manifest(_only_rootfs(data))
        blobs = [data / "cas" / "blobs" / "sha256" / d for d in image.layer_digests]  # what edgevol unpacked
        fill = {"layout": shlex.quote(str(layout)), "tag": TAG,
                "layers": " ".join(shlex.quote(str(p)) for p in blobs)}
        for name, template, _, result in specs:
            target = keep / f"{name}-{i}"
            cmd = template.format(x=shlex.quote(str(target)), **fill)
            base[name].add(run_timed([cmd], env.log(f"unpack-{name}-{i}"), shell=True))
            if i == 0 and result is not None:
                facts[name] = tree_manifest(target / result)
    shutil.rmtree(keep)
    shutil.rmtree(layout)

    mine = facts["edgevol"]
    wrong = _differences(mine, facts["tar"])
    if wrong:  # not a test, a guard: figures for a wrong rootfs would be worthless
        raise RuntimeError("edgevol's rootfs differs from tar's:\n" + "\n".join(wrong))
    umoci_diff = _differences(mine, facts["umoci"])

    n = mine.file_bytes
    t = Table(f"5. Unpack the {len(image.layers)}-layer image into a rootfs",
              f"The image of benchmark 4. A first run loads the content tree into the CAS (not timed); then the "
              "same config is run again with nothing to do (*re-run*, timed), then a config that adds a "
              "`VCOT_DOWNLOAD` volume from it (a directory volume, `DATA/volumes/<uuid>#0.container/rootfs`) is "
              "timed. *Net* = volume run − re-run: streaming each gzip layer through edgevol's confined tar "
              "extractor in order, applying directory metadata, one `sync()` and the rename into place. The "
              "baselines unpack the same layers: `umoci` from the OCI layout `skopeo copy` wrote, `tar` straight "
              f"from edgevol's CAS blobs. The rootfs holds {mine.files} regular files of {fmt_bytes(n)} "
              f"({mine.extra_links} more names as hardlinks), {mine.dirs} directories and {mine.symlinks} "
              "symlinks. MB/s = regular-file bytes written ÷ time.")
    t.rows.append(runs_cells(display_cmd("D", "unpack-load.pb") + " (re-run, nothing to do)", noop))
    t.rows.append(runs_cells(display_cmd("D", "unpack-volume.pb"), ev, n, disk=mine.disk))
    row, net = net_row("edgevol volume step, net of re-run", ev.seconds, noop.seconds, n)
    t.rows.append(row)
    if inner:
        t.rows.append(spans_row("edgevol, agent log: `config applied` → `volume created`", inner, n))
    for name, _, label, _ in specs:
        used = facts[name].disk if name in facts else None
        t.rows.append(runs_cells(label, base[name], n, disk=used,
                                 ratio=f"{fmt_ratio(ev.median, base[name].median)} gross, "
                                       f"{fmt_ratio(net, base[name].median)} net"))
    t.notes.append("Checked once, file by file (type, permissions, mtime, size, sha256, link target, link "
                   "count): edgevol's rootfs is identical to the tar loop's, including the `etc/conf-*` files "
                   "that the last layer rewrites. " + ("umoci's rootfs is identical too." if not umoci_diff else
                                                       "umoci's differs: " + "; ".join(umoci_diff)))
    t.notes.append("edgevol makes the volume durable with one `sync()` before renaming it into place, hence the "
                   "`&& sync` variants. umoci also writes an mtree manifest of the whole rootfs (it hashes "
                   "every file again); GNU tar runs `gzip -d` as a separate process, so decompression and "
                   "extraction overlap on two cores.")
    t.notes.append(f"Peak RSS of edgevol during the volume run: {fmt_mb(ev.peak_rss)} MB; umoci "
                   f"{fmt_mb(base['umoci'].peak_rss)} MB; tar {fmt_mb(base['tar'].peak_rss)} MB.")
    env.summary.append(
        f"Unpacking that image ({mine.files} files, {fmt_bytes(n)}) into a rootfs: the volume step takes "
        f"{fmt_s(net)} s net versus {fmt_s(base['umoci-sync'].median)} s for `umoci unpack` + `sync` "
        f"({fmt_ratio(net, base['umoci-sync'].median)}) and {fmt_s(base['tar-sync'].median)} s for `tar -xzf` "
        f"per layer + `sync` ({fmt_ratio(net, base['tar-sync'].median)}); the rootfs is identical to tar's.")
    return t
