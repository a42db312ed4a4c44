"""Benchmark 8: a fleet of simulated EVE devices against the controller, on PostgreSQL and on SQLite.

What an operator sizing a controller needs is not how fast one request is but
how many devices one core carries at EVE's rates, and how the answers hold up
at that load. ``edgevol fleet simulate`` provides the load and the figures (every
request a signed EVE message); this module sets the stage: a throwaway
PostgreSQL cluster with PostgreSQL's default durability (unlike the tests'
cluster, which turns fsync off), a controller process on it, the fleet
provisioned once and reused through a state file, and the runs:
EVE rates, a closed loop with one controller process and, when
``controller run`` has ``--workers``, with two.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx

from bench import ctrl_costs
from bench.cases import Env
from bench.report import Table

__all__ = ["FleetArgs", "fleet_runs"]

REPO = Path(__file__).resolve().parent.parent
EDGEVOL = [sys.executable, "-m", "edgevol.cli"]
# EVE's rates per device: config poll and metrics every 60 s, info (sent on change) modelled as one per 300 s.
INTERVALS = {"config": 60.0, "info": 300.0, "metrics": 60.0}
PER_DEVICE_RATE = sum(1 / s for s in INTERVALS.values())
# Issue 16's goals: 10,000 devices at EVE rates on PostgreSQL answered with p99 < 250 ms and no error; a
# closed loop of at least 1,000 signed requests a second.
GOAL_P99_MS, GOAL_CAPACITY = 250.0, 1000.0
KINDS = ("config", "info", "metrics")
COLUMNS = ["Run", "Devices", "s", "Req/s", "config p50 / p99 ms", "info p50 / p99 ms", "metrics p50 / p99 ms",
           "Errors", "Controller CPU ms/req", "PostgreSQL CPU ms/req", "Simulator CPU ms/req",
           "Controller peak RSS MB", "Devices per core"]


@dataclass
class FleetArgs:
    devices: int = 10_000
    seconds: float = 60.0  # the EVE-rate run
    closed_seconds: float = 30.0
    concurrency: int = 16
    procs: int = 1  # simulator processes
    sqlite_devices: int = 1_000


def _env() -> dict[str, str]:
    """Children run this checkout's edgevol, whatever the venv's editable install points at."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- PostgreSQL


class PgServer:
    """initdb + pg_ctl on 127.0.0.1 in a scratch directory, as the postgres user when run as root."""

    def __init__(self, root: Path, log: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/initdb): "
                               "install the Debian 'postgresql' package")
        self.bin = Path(found[-1]).parent
        # the server writes its log where it may (its own directory); stop() copies it to the bench logs
        self.root, self.data, self.log, self.saved_log = root, root / "data", root / "postgres.log", log
        self.port = 0
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
            os.chown(root, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")

    def start(self) -> str:
        """Start the server; returns the database URL."""
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C")
        self.port = _free_port()
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}", "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "edgevol")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/edgevol"

    def database(self, name: str) -> str:
        """A new, empty database on this server; returns its URL."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def pid(self) -> int:
        """The postmaster: every backend is its child."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                            "stop"], capture_output=True, timeout=120)
        if self.log.exists():
            self.saved_log.write_bytes(self.log.read_bytes())


# ---------------------------------------------------------------- the controller


@dataclass
class ControllerProc:
    data_dir: Path
    db_url: str
    log: Path
    workers: int = 1
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ControllerProc:
        self.port = _free_port()
        extra = ["--workers", str(self.workers)]  # explicit: on PostgreSQL the default is one per core
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*EDGEVOL, "controller", "run", "--data-dir", str(self.data_dir), "--db",
                                          self.db_url, "--listen", f"127.0.0.1:{self.port}", "--no-tls", *extra],
                                         stdout=log, stderr=log, env=_env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/api/v2/edgedevice/ping", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the controller did not answer within 60 s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def has_workers_option() -> bool:
    """Whether ``controller run`` takes --workers (added separately; without it run (c) is skipped)."""
    out = subprocess.run([*EDGEVOL, "controller", "run", "--help"], capture_output=True, text=True, env=_env(),
                         timeout=60)
    return "--workers" in out.stdout


# ---------------------------------------------------------------- one simulation


@dataclass
class Run:
    label: str
    db: str
    workers: int
    report: dict[str, Any]
    exit_code: int
    load_before: str = ""

    @property
    def kinds(self) -> dict[str, Any]:
        return dict(self.report["kinds"])

    def cpu_ms(self, tree: str) -> float | None:
        trees = self.report.get("controller", {}).get("trees", {})
        return trees[tree]["cpu_ms_per_request"] if tree in trees else None

    @property
    def server_ms(self) -> float:
        """Controller plus database CPU per request: what a request costs the server side."""
        return sum(x for x in (self.cpu_ms("controller"), self.cpu_ms("postgres")) if x)


def _simulate(env: Env, ctrl: ControllerProc, args: FleetArgs, tag: str, devices: int, mode: str, seconds: float,
              state: Path, pids: list[tuple[str, int]], extra: Sequence[str] = ()) -> tuple[dict[str, Any], int]:
    cmd = [*EDGEVOL, "fleet", "simulate", "--controller", ctrl.url, "--controller-dir", str(ctrl.data_dir),
           "--devices", str(devices), "--duration", str(seconds), "--mode", mode, "--state", str(state),
           "--procs", str(args.procs), "--concurrency", str(args.concurrency), "-o", "json",
           *(a for label, pid in pids for a in ("--controller-pid", f"{label}={pid}")),
           *(a for k, s in INTERVALS.items() for a in (f"--eve-{k}-interval", f"{s:g}")), *extra]
    log = env.log(f"fleet-{tag}")
    with open(log, "ab") as err:
        err.write(f"$ {' '.join(cmd)}\n".encode())
        err.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, env=_env())
    if proc.returncode not in (0, 1):  # 1: some requests failed, which the table shows
        raise RuntimeError(f"fleet simulate ({tag}) exited {proc.returncode}; see {log}")
    (env.logs / f"fleet-{tag}.json").write_bytes(proc.stdout)
    return json.loads(proc.stdout), proc.returncode


@dataclass
class _Stage:
    env: Env
    args: FleetArgs
    runs: list[Run] = field(default_factory=list)
    provisioned: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # db, workers, figures
    notes: list[str] = field(default_factory=list)

    def run(self, ctrl: ControllerProc, label: str, db: str, tag: str, devices: int, mode: str, seconds: float,
            state: Path, pids: list[tuple[str, int]]) -> Run:
        load = _load()
        print(f"fleet: {label} ({devices:,} devices, {seconds:g} s)", flush=True)
        report, code = _simulate(self.env, ctrl, self.args, tag, devices, mode, seconds, state, pids)
        if report["provisioning"]["created"]:
            self.provisioned.append((db, ctrl.workers, report["provisioning"]))
        run = Run(label, db, ctrl.workers, report, code, load)
        self.runs.append(run)
        return run

    def provision(self, ctrl: ControllerProc, db: str, devices: int, state: Path) -> None:
        """Only provision (one request of load, not reported): the fleet is then reused from ``state``."""
        print(f"fleet: provisioning {devices:,} devices on {db} ({ctrl.workers} controller processes)", flush=True)
        args = FleetArgs(**{**self.args.__dict__, "concurrency": 1})
        report, _ = _simulate(self.env, ctrl, args, f"{db.lower()}-provision", devices, "closed", 0.1, state, [],
                              ["--max-requests", "1"])
        self.provisioned.append((db, ctrl.workers, report["provisioning"]))


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


@contextlib.contextmanager
def _controller(data: Path, db_url: str, log: Path, workers: int = 1) -> Iterator[ControllerProc]:
    ctrl = ControllerProc(data, db_url, log, workers=workers).start()
    try:
        yield ctrl
    finally:
        ctrl.stop()


def _pids(ctrl: ControllerProc, pg: PgServer | None = None) -> list[tuple[str, int]]:
    assert ctrl.proc is not None
    return [("controller", ctrl.proc.pid)] + ([("postgres", pg.pid)] if pg is not None else [])


def _postgres_runs(stage: _Stage, workers_ok: bool) -> None:
    """With --workers, the fleet is provisioned by two controller processes (twice as fast), which then run
    the closed loop and EVE rates; then the same on a restarted one-process controller, the fleet reused."""
    env, args = stage.env, stage.args
    pg = PgServer(env.scratch("fleet-pg"), env.log("fleet-postgres"))
    data = env.scratch("fleet-controller-pg")
    state = env.out / "fleet-pg-state.json"
    try:
        url = pg.start()
        if workers_ok:
            with _controller(data, url, env.log("fleet-controller-pg-2"), workers=2) as ctrl:
                stage.provision(ctrl, "PostgreSQL", args.devices, state)
                stage.run(ctrl, "PostgreSQL, closed loop, 2 controller processes (`--workers 2`)", "PostgreSQL",
                          "pg-closed-2", args.devices, "closed", args.closed_seconds, state, _pids(ctrl, pg))
                stage.run(ctrl, "PostgreSQL, EVE rates, 2 controller processes (`--workers 2`, the default here)",
                          "PostgreSQL", "pg-eve-2", args.devices, "eve", args.seconds, state, _pids(ctrl, pg))
        else:
            stage.notes.append("`edgevol controller run` has no `--workers` option in this checkout: the closed loop "
                               "with 2 controller processes was skipped.")
        with _controller(data, url, env.log("fleet-controller-pg")) as ctrl:
            stage.run(ctrl, "PostgreSQL, EVE rates, 1 controller process", "PostgreSQL", "pg-eve", args.devices,
                      "eve", args.seconds, state, _pids(ctrl, pg))
            stage.run(ctrl, "PostgreSQL, closed loop, 1 controller process", "PostgreSQL", "pg-closed-1",
                      args.devices, "closed", args.closed_seconds, state, _pids(ctrl, pg))
    finally:
        pg.stop()
    stage.runs.sort(key=lambda r: (r.report["settings"]["mode"] != "eve", r.workers))  # (a), (b), (c)


def _sqlite_run(stage: _Stage) -> None:
    env, args = stage.env, stage.args
    data = env.scratch("fleet-controller-sqlite")
    with _controller(data, f"sqlite:///{data / 'controller.db'}", env.log("fleet-controller-sqlite")) as ctrl:
        stage.run(ctrl, "SQLite, closed loop, 1 controller process", "SQLite", "sqlite-closed-1",
                  args.sqlite_devices, "closed", args.closed_seconds, env.out / "fleet-sqlite-state.json",
                  _pids(ctrl))


def fleet_runs(env: Env, args: FleetArgs) -> list[Table]:
    stage = _Stage(env, args)
    costs = _costs_table(env)
    _postgres_runs(stage, has_workers_option())
    _sqlite_run(stage)
    _summary(env, stage)
    return [costs, _table(stage)]


# The controller before issue 16's work on request costs: the "before" column of the in-process costs.
BASELINE = "57ce795"
COST_KINDS = {"config_304": "config poll answered 304", "config_200": "config poll answered 200 (hash changed)",
              "info": "info post (one volume)", "metrics": "metrics post (two volumes)"}


def _costs_table(env: Env, reps: int = 300) -> Table:
    """bench/ctrl_costs.py on this checkout and on BASELINE, SQLite and PostgreSQL: a request's own cost."""
    rows = []
    pg = PgServer(env.scratch("costs-pg"), env.log("costs-postgres"))
    try:
        pg.start()
        for db in ("SQLite", "PostgreSQL"):
            url = None if db == "SQLite" else pg.database("costs_now")
            with tempfile.TemporaryDirectory(prefix="ctrl-costs-") as tmp:
                now = ctrl_costs.measure(url, reps, Path(tmp))
            before = ctrl_costs.measure_revision(BASELINE, None if db == "SQLite" else pg.database("costs_before"),
                                                 reps, env.scratch("costs-baseline"))
            for kind, label in COST_KINDS.items():
                b, a = before[kind], now[kind]
                rows.append([db, label, f"{b['median_ms']:.2f}", f"{b['sql_per_request']:.1f}",
                             f"{a['median_ms']:.2f}", f"{a['sql_per_request']:.1f}",
                             f"{b['median_ms'] / a['median_ms']:.1f}×"])
    finally:
        pg.stop()
    intro = ("`bench/ctrl_costs.py`: the device API's request methods called in-process (no HTTP, no simulator) "
             f"with real signed bodies, {reps} times each, on a device with a datastore (credentials encrypted, "
             "as for a device in the field), a content tree and two volumes; median wall time and SQL statements "
             f"sent per request (a cursor listener). *Before* is commit {BASELINE}, the controller before this work; "
             "info and metrics are each stored in a transaction of their own here (no concurrent posts to batch "
             "with).")
    t = Table("8a. Controller: in-process cost per device request", intro,
              columns=["Database", "Request", "Before ms", "Before SQL", "Now ms", "Now SQL", "Faster"])
    t.rows = rows
    return t


# ---------------------------------------------------------------- the report


def _pair(k: dict[str, Any]) -> str:
    return f"{k['p50_ms']:.1f} / {k['p99_ms']:.1f}" if k["count"] else "—"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def devices_per_core(cpu_ms_per_request: float) -> float:
    """Devices one core serves at EVE's rates: 1 / (requests per device per second × CPU seconds per request)."""
    return 1 / (PER_DEVICE_RATE * cpu_ms_per_request / 1000) if cpu_ms_per_request > 0 else 0.0


def _row(run: Run) -> list[str]:
    r = run.report
    ctrl, pg = run.cpu_ms("controller"), run.cpu_ms("postgres")
    per_core = f"{devices_per_core(ctrl):,.0f}" if ctrl else "—"
    if ctrl and pg:
        per_core += f" ({devices_per_core(run.server_ms):,.0f} with PostgreSQL)"
    errors = r["total"]["errors"]
    return [run.label, f"{r['settings']['devices']:,}", f"{r['seconds']:.0f}", f"{r['total']['per_second']:,.0f}",
            *(_pair(run.kinds[k]) for k in KINDS), f"{errors:,}" if errors else "0", _ms(ctrl), _ms(pg),
            _ms(r["simulator"]["cpu_ms_per_request"]),
            f"{r['controller']['trees']['controller']['peak_rss_mb']:.0f}", per_core]


def _simulator_share(run: Run) -> float:
    """The part of its cores the simulator used: near 1, it may have been the limit, not the controller."""
    r = run.report
    return float(r["simulator"]["cpu_s"]) / max(r["seconds"], 1e-9) / max(int(r["settings"]["procs"]), 1)


def _table(stage: _Stage) -> Table:
    args = stage.args
    intro = (
        "`edgevol fleet simulate` provisions the devices (one shared onboarding certificate, each device created "
        "through the admin API, then register, uuid, attest nonce and quote, and a first config: six requests a "
        "device) and loads the controller with signed EVE messages: config polls with the configHash it last got "
        "(304 when nothing changed), volume info and volume metrics (each must get 201). *EVE rates*: each device "
        f"polls its config and posts metrics every {INTERVALS['config']:g} s and info every {INTERVALS['info']:g} s, "
        f"phases spread evenly ({PER_DEVICE_RATE * args.devices:,.0f} req/s offered for {args.devices:,} devices). "
        f"*Closed loop*: {args.concurrency} requests always in flight, kinds in the same proportions. The controller "
        "runs `edgevol controller run --no-tls` on loopback; PostgreSQL is a fresh local cluster with its default "
        "durability (fsync, synchronous commit). CPU is read from /proc for the controller's and the postmaster's "
        "whole process trees over the load phase only, divided by the requests sent; *devices per core* is 1 ÷ "
        "(requests a device sends a second at EVE rates × controller CPU s per request), the same with "
        "PostgreSQL's CPU added in brackets. *Req/s* counts answers a second. A latency runs to the whole answer, "
        "from when the request was sent (closed loop) or from when its device was due to send it (EVE rates).")
    t = Table("8. Fleet: simulated EVE devices against the controller", intro, columns=COLUMNS)
    t.rows = [_row(r) for r in stage.runs]
    for db, workers, p in stage.provisioned:
        t.notes.append(f"{db}: provisioning {p['created']:,} devices with {workers} controller process(es) took "
                       f"{p['seconds']:.0f} s ({p['per_second']:.0f} devices/s), before the load phases and not in "
                       "their figures.")
    for run in stage.runs:
        share = _simulator_share(run)
        note = (f"{run.label}: load average {run.load_before} before the command, {run.report['load_average']} at "
                f"the end of its load phase; the simulator used {share:.0%} of its core")
        if share > 0.8:
            note += " — it may have been the limit, not the controller"
        if run.exit_code:
            note += f"; {run.report['total']['errors']:,} requests failed: {_errors(run)}"
        t.notes.append(note + ".")
    eve = next((r for r in stage.runs if r.report["settings"]["mode"] == "eve"), None)
    if eve is not None and "schedule_lag_ms" in eve.report:
        lag = eve.report["schedule_lag_ms"]
        t.notes.append(f"EVE rates: requests left the simulator p50 {lag['p50']:.1f} ms, p99 {lag['p99']:.1f} ms after "
                       "they were due, waiting for one of its connections, all busy when the controller answers "
                       "slower than the fleet asks; that wait is part of the latencies shown, and a request still "
                       "waiting 30 s (`--timeout`) after it was due counts as an error (*not sent, behind schedule*), "
                       "as a device would have given up.")
    hwm = max((r.report["controller"]["trees"]["controller"]["max_process_hwm_mb"] for r in stage.runs), default=0)
    t.notes.append(f"*Controller peak RSS* is the largest RSS sampled (every second) during a load phase; the "
                   f"controller's own high-water mark (VmHWM), provisioning included, reached {hwm:.0f} MB.")
    t.notes.append("Each request is signed afresh by its device's key (P-256), as EVE signs; nothing is replayed. "
                   "Simulated devices share keep-alive connections (64 per simulator process at EVE rates) where real "
                   "devices would hold one each, so connection set-up is not measured.")
    t.notes += stage.notes
    return t


def _errors(run: Run) -> str:
    parts = [f"{k} {reason}×{n}" for k in KINDS for reason, n in run.kinds[k]["errors"].items()]
    return ", ".join(parts) or "?"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _summary(env: Env, stage: _Stage) -> None:
    eves = [r for r in stage.runs if r.db == "PostgreSQL" and r.report["settings"]["mode"] == "eve"]
    closed = [r for r in stage.runs if r.db == "PostgreSQL" and r.report["settings"]["mode"] == "closed"]
    parts = []
    for eve in eves:
        p99 = max(k["p99_ms"] for k in eve.kinds.values())
        errors = eve.report["total"]["errors"]
        rss = eve.report["controller"]["trees"]["controller"]["peak_rss_mb"]
        parts.append(f"{eve.report['settings']['devices']:,} simulated EVE devices on PostgreSQL at EVE rates "
                     f"({eve.report['total']['per_second']:,.0f} req/s), {eve.workers} controller process(es): p99 "
                     f"{p99:.0f} ms over all kinds, {errors:,} errors (goal p99 < {GOAL_P99_MS:g} ms and no error: "
                     f"{_verdict(p99 < GOAL_P99_MS and errors == 0)}), controller CPU "
                     f"{_ms(eve.cpu_ms('controller'))} ms a request (+{_ms(eve.cpu_ms('postgres'))} ms in "
                     f"PostgreSQL), controller RSS {rss:.0f} MB at most (goal < 500: {_verdict(rss < 500)}).")
    if closed:
        best = max(closed, key=lambda r: r.report["total"]["per_second"])
        rate = best.report["total"]["per_second"]
        text = ("Closed-loop capacity on PostgreSQL: " + ", ".join(
            f"{r.report['total']['per_second']:,.0f} req/s with {r.workers} controller process(es) (controller "
            f"{_ms(r.cpu_ms('controller'))} ms CPU a request, simulator "
            f"{_ms(r.report['simulator']['cpu_ms_per_request'])})" for r in closed)
            + f" (goal ≥ {GOAL_CAPACITY:,.0f}: {_verdict(rate >= GOAL_CAPACITY)}).")
        by_workers = {r.workers: r.report["total"]["per_second"] for r in closed}
        if by_workers.get(1) and 2 in by_workers:
            ratio = by_workers[2] / by_workers[1]
            text += f" Two processes: {ratio:.2f}× one (goal ≥ 1.3: {_verdict(ratio >= 1.3)})."
        parts.append(text)
    if parts:
        env.summary.append("Fleet: " + " ".join(parts))
