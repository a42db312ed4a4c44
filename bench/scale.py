"""Benchmark 7: thousands of volumes and hundreds of apps in one config, against a qemu-img loop.

For each N: one small qcow2 content tree, N/2 volumes cloned from it
(``edgevol.volume.clone=backing``), N/2 blank qcow2 volumes and N/10 apps
sharing them out. Three ``device run --once`` processes on one data dir are
timed: the first creates everything, a re-run of the same config finds
nothing to do, and a config that keeps only the datastore deletes it all.
What is measured here is the agent's per-object cost (state, admission,
reports), not bytes: every file is tiny. A bash script doing the same
file work with qemu-img shows how much of it the tool itself costs.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.cases import CLONE_ITEM, Env, display_cmd, disk_use, edgevol_cmd, volume_files
from bench.harness import Runs, run_timed
from bench.report import Table, fmt_bytes, fmt_mb, fmt_ratio, fmt_s, runs_cells
from tests.configs import ConfigBuilder, sha256_file

__all__ = ["scale_runs"]

# The image's virtual size and every volume's maxsizebytes. Admission promises each writable volume its growth
# room up to maxsizebytes: 10,000 volumes of 16 MiB would ask for 156 GiB, more than many disks have free.
VOLUME_MIB = 1
VOLUME_SIZE = VOLUME_MIB << 20
VOLUMES_PER_APP = 10
ITEMS = {CLONE_ITEM: "backing", "edgevol.volume.blank.format": "qcow2"}  # explicit: defaults may change
RESERVE = 256 << 20  # the device's default edgevol.disk.reserve.bytes
# Issue 15's goals: 1,000 volumes + 100 apps in one --once run, delete-all, peak RSS at any size.
GOAL_N, GOAL_FIRST_S, GOAL_DELETE_S, GOAL_RSS = 1000, 10.0, 3.0, 200_000_000


@dataclass
class _Size:
    """Everything measured for one N."""

    n: int
    reps: int
    first: Runs = field(default_factory=Runs)  # creates every volume and app (and loads the blob)
    rerun: Runs = field(default_factory=Runs)  # same config again: nothing to do
    delete: Runs = field(default_factory=Runs)  # a config with no content trees, volumes or apps
    qemu_create: Runs = field(default_factory=Runs)
    qemu_delete: Runs = field(default_factory=Runs)
    ev_disk: int = 0
    qemu_disk: int = 0

    @property
    def clones(self) -> int:
        return self.n // 2

    @property
    def blanks(self) -> int:
        return self.n - self.n // 2

    @property
    def apps(self) -> int:
        return max(1, self.n // VOLUMES_PER_APP)

    @property
    def peak_rss(self) -> int:
        return max(r.peak_rss for r in (self.first, self.rerun, self.delete))


def _image(env: Env) -> tuple[Path, str]:
    """The shared content tree: an empty qcow2, so the download is negligible and each clone is pure overhead."""
    image = env.datastore / "scale.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(VOLUME_SIZE)], check=True)
    return image, sha256_file(image)


def _builder(device_id: str | None = None) -> ConfigBuilder:
    b = ConfigBuilder(device_id)
    for key, value in ITEMS.items():
        b.item(key, value)
    return b


def _configs(env: Env, size: _Size, image: Path, digest: str) -> tuple[Path, Path]:
    """(everything, nothing but the same datastore): the second makes the agent delete all the first made."""
    b = _builder()
    ds = b.datastore(env.url)
    ct = b.content_tree(ds, image.name, digest, "qcow2", name="scale")
    volumes = [b.download_volume(ct, VOLUME_SIZE, name=f"clone-{k}") for k in range(size.clones)]
    volumes += [b.blank_volume(VOLUME_SIZE, name=f"blank-{k}") for k in range(size.blanks)]
    for a in range(size.apps):
        b.app(volumes[a::size.apps], name=f"app-{a}")  # each app gets clones and blank volumes alike
    full = b.save(env.out / f"scale-{size.n}.pb")
    empty = _builder(b.cfg.id.uuid)
    empty.datastore(env.url, ds_id=ds)
    return full, empty.save(env.out / f"scale-{size.n}-none.pb")


def _scripts(env: Env, size: _Size, blob: Path, work: Path) -> tuple[Path, Path]:
    """The baseline as two bash scripts: the same files made by qemu-img alone, then removed."""
    create = env.out / f"scale-{size.n}-create.sh"
    create.write_text(
        f"set -e\ncd {shlex.quote(str(work))}\n"
        f"for i in $(seq {size.clones}); do qemu-img create -q -f qcow2 -F qcow2 -b {shlex.quote(str(blob))} "
        "clone-$i.qcow2; done\n"
        f"for i in $(seq {size.blanks}); do qemu-img create -q -f qcow2 blank-$i.qcow2 {VOLUME_MIB}M; done\n"
        "sync\n")
    delete = env.out / f"scale-{size.n}-delete.sh"
    delete.write_text(f"set -e\nfind {shlex.quote(str(work))} -name '*.qcow2' -delete\nsync\n")
    return create, delete


def _backed(path: Path) -> bool:
    """Whether a qcow2 file names a backing file (header: magic, version, backing_file_offset), read directly
    because 10,000 `qemu-img info` processes would take longer than the runs they check."""
    with open(path, "rb") as f:
        head = f.read(16)
    return head[:4] == b"QFI\xfb" and int.from_bytes(head[8:16], "big") != 0


def _expect(files: list[Path], n: int, what: str, log: Path) -> None:
    """Figures for a wrong result are worthless: stop here, pointing at the log."""
    if len(files) != n:
        raise RuntimeError(f"{what}: {len(files)} volume files, expected {n}; see {log}")


def _edgevol_round(env: Env, size: _Size, i: int, configs: tuple[Path, Path]) -> None:
    """First run, re-run and delete-all on one fresh data dir; run_timed raises on a non-zero exit."""
    full, empty = configs
    data = env.scratch(f"scale-{size.n}")
    for runs, cfg, phase, left in ((size.first, full, "first", size.n), (size.rerun, full, "rerun", size.n),
                                   (size.delete, empty, "delete", 0)):
        log = env.log(f"scale-{size.n}-{phase}-{i}")
        runs.add(run_timed(edgevol_cmd(data, cfg), log))
        files = volume_files(data)
        _expect(files, left, f"edgevol {phase} run of N={size.n}", log)
        if phase == "first":
            size.ev_disk = sum(disk_use(p) for p in files)
            _expect([p for p in files if _backed(p)], size.clones, f"clones (overlays) of N={size.n}", log)
    shutil.rmtree(data)


def _qemu_round(env: Env, size: _Size, i: int, blob: Path) -> None:
    work = env.scratch(f"scale-{size.n}-qemu")
    create, delete = _scripts(env, size, blob, work)
    log = env.log(f"scale-{size.n}-qemu-create-{i}")
    size.qemu_create.add(run_timed(["bash", str(create)], log))
    files = sorted(work.iterdir())
    _expect(files, size.n, f"qemu-img script for N={size.n}", log)
    size.qemu_disk = sum(disk_use(p) for p in files)
    log = env.log(f"scale-{size.n}-qemu-delete-{i}")
    size.qemu_delete.add(run_timed(["bash", str(delete)], log))
    _expect(sorted(work.iterdir()), 0, f"delete script for N={size.n}", log)
    shutil.rmtree(work)


def _check_space(env: Env, largest: int) -> None:
    """Fail in a second, not after minutes: the agent refuses volumes whose growth room does not fit."""
    need = largest * VOLUME_SIZE + RESERVE
    free = shutil.disk_usage(env.out).free
    if free < need:
        raise RuntimeError(f"{largest} volumes of {fmt_bytes(VOLUME_SIZE)} need {fmt_bytes(need)} free for the "
                           f"agent to admit them; {env.out} has {fmt_bytes(free)}")


def scale_runs(env: Env, counts: list[int], largest_reps: int) -> Table:
    """``counts``: the N to run; the largest runs ``largest_reps`` times (it may take minutes), the rest env.reps."""
    _check_space(env, max(counts))
    sizes = [_Size(n, largest_reps if n == max(counts) else env.reps) for n in counts]
    image, digest = _image(env)
    configs = {s.n: _configs(env, s, image, digest) for s in sizes}
    for i in range(max(s.reps for s in sizes)):
        for s in sizes:
            if i < s.reps:  # interleaved: each N's edgevol runs next to its own baseline
                _edgevol_round(env, s, i, configs[s.n])
                _qemu_round(env, s, i, image)
    image.unlink()
    _summary(env, sizes)
    return _table(sizes)


def _per_volume(runs: Runs, n: int) -> str:
    return f"{runs.median / n * 1000:.2f} ms/volume"


def _rows(s: _Size) -> list[list[str]]:
    first, delete = s.first.median, s.delete.median
    make = (f"bash: {s.clones}× `qemu-img create -f qcow2 -F qcow2 -b BLOB X`, {s.blanks}× "
            f"`qemu-img create -f qcow2 X {VOLUME_MIB}M`, sync")
    return [
        runs_cells(f"N = {s.n:,}: {display_cmd('D', f'scale-{s.n}.pb')}, first run ({s.clones:,} clones, "
                   f"{s.blanks:,} blank, {s.apps:,} apps)", s.first, disk=s.ev_disk, ratio=_per_volume(s.first, s.n)),
        runs_cells(f"N = {s.n:,}: the same again (re-run, nothing to do)", s.rerun, ratio=_per_volume(s.rerun, s.n)),
        runs_cells(f"N = {s.n:,}: {display_cmd('D', f'scale-{s.n}-none.pb')}, delete-all", s.delete,
                   ratio=_per_volume(s.delete, s.n)),
        runs_cells(f"N = {s.n:,}: {make}", s.qemu_create, disk=s.qemu_disk,
                   ratio=f"{_per_volume(s.qemu_create, s.n)}; first run {fmt_ratio(first, s.qemu_create.median)}"),
        runs_cells(f"N = {s.n:,}: bash: `find DIR -name '*.qcow2' -delete`, sync", s.qemu_delete,
                   ratio=f"{_per_volume(s.qemu_delete, s.n)}; delete-all {fmt_ratio(delete, s.qemu_delete.median)}"),
    ]


def _growth(a: _Size, b: _Size) -> str:
    """How time grows from N=a to N=b: time ratio ÷ N ratio, 1 being linear."""
    def factor(pick: str) -> str:
        ta, tb = getattr(a, pick).median, getattr(b, pick).median
        return f"{tb / ta / (b.n / a.n):.2f}" if ta > 0 else "—"

    return (f"From {a.n:,} to {b.n:,} volumes (×{b.n / a.n:g}), the time per volume changes ×{factor('first')} "
            f"for the first run, ×{factor('rerun')} for the re-run, ×{factor('delete')} for delete-all and "
            f"×{factor('qemu_create')} for the qemu-img script (time ratio ÷ N ratio: 1.00 = linear, 2.00 = each "
            "volume costs twice as much).")


def _table(sizes: list[_Size]) -> Table:
    reps = ", ".join(f"N = {s.n:,} ×{s.reps}" for s in sizes)
    t = Table(f"7. Scale: {' and '.join(f'{s.n:,}' for s in sizes)} volumes in one config",
              f"Per N, one config: a {fmt_bytes(VOLUME_SIZE)} empty qcow2 content tree on the loopback datastore, "
              f"N/2 `VCOT_DOWNLOAD` volumes of it with `{CLONE_ITEM}=backing` (qcow2 overlays), N/2 blank qcow2 "
              f"volumes, every volume {fmt_bytes(VOLUME_SIZE)}, and N/{VOLUMES_PER_APP} apps, each referencing "
              f"{VOLUMES_PER_APP} of the volumes. Three `device run --once` processes on one fresh data dir are "
              "timed: the *first run* (downloads the blob, creates every volume, records the apps), a *re-run* "
              "of the same config, and *delete-all*, a config that keeps only the datastore (volumes, apps, the "
              "content tree and its blob go). Each must exit 0 and leave N volume files, N, then none. The "
              "baseline scripts make and remove the same files with qemu-img and find, one process per volume. "
              f"Repetitions: {reps} (the largest N runs `--scale-reps` times, the others `--reps`). The last "
              "column gives the median time per volume and, for the baselines, edgevol ÷ baseline.")
    for s in sizes:
        t.rows.extend(_rows(s))
    t.notes += [_growth(a, b) for a, b in zip(sizes, sizes[1:])]
    peaks = ", ".join(f"{fmt_mb(s.peak_rss)} MB at N = {s.n:,}" for s in sizes)
    t.notes.append(f"Peak RSS of edgevol (largest of its three runs): {peaks} (goal < {GOAL_RSS / 1e6:g} MB).")
    t.notes.append("After each first run, exactly N/2 of the volume files were qcow2 overlays naming a backing file "
                   "(the clones).")
    t.notes.append("Creations here follow the previous round's deletions within a minute, for edgevol and the "
                   "qemu-img script alike; on a filesystem like ext4 without a journal that makes creating files "
                   "slower (see bench/README.md).")
    t.notes.append(f"Volumes are {fmt_bytes(VOLUME_SIZE)} rather than larger because the agent admits a volume only "
                   "if its growth room up to maxsizebytes fits on the disk; the file work is the same at any size.")
    return t


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _summary(env: Env, sizes: list[_Size]) -> None:
    shown = next((s for s in sizes if s.n == GOAL_N), sizes[-1])
    peak = max(s.peak_rss for s in sizes)

    def goal(seconds: float, limit: float) -> str:
        return f" (goal ≤ {limit:g} s: {_verdict(seconds <= limit)})" if shown.n == GOAL_N else ""

    text = (f"Scale, {shown.n:,} volumes ({shown.clones:,} clones + {shown.blanks:,} blank) and {shown.apps:,} apps: "
            f"the first `--once` run takes {fmt_s(shown.first.median)} s{goal(shown.first.median, GOAL_FIRST_S)}, a "
            f"re-run with nothing to do {fmt_s(shown.rerun.median)} s, delete-all {fmt_s(shown.delete.median)} s"
            f"{goal(shown.delete.median, GOAL_DELETE_S)}; qemu-img alone makes the same files in "
            f"{fmt_s(shown.qemu_create.median)} s. Peak RSS {fmt_mb(peak)} MB up to {sizes[-1].n:,} volumes "
            f"(goal < {GOAL_RSS / 1e6:g} MB: {_verdict(peak < GOAL_RSS)}).")
    if shown.n != GOAL_N:
        text += f" The time goals are set for {GOAL_N:,} volumes, not run here."
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        text += (f" From {a.n:,} to {b.n:,} volumes the first run's time per volume changes "
                 f"×{b.first.median / a.first.median / (b.n / a.n):.2f} (1 = linear).")
    env.summary.append(text)
