"""``edgevol fleet simulate``: a fleet of simulated EVE devices loading a controller, with figures.

Why a command and not a script: sizing a controller is an operator's question,
and the answer (latency, errors, CPU per request on both sides) should come
from the same code the benchmark uses. Exit codes: 0 every request answered
as EVE expects, 1 some request failed (error counts in the report), 2 usage
error, 3 the run could not happen (controller unreachable, provisioning refused).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from edgevol.netaddr import is_loopback_host

EXIT_FAILED_REQUESTS = 1
EXIT_CANNOT_RUN = 3
KINDS = ("config", "info", "metrics")


@click.group()
def fleet() -> None:
    """Simulated fleets of EVE devices, to size and load-test a controller."""


def _loopback_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"want http://HOST:PORT or https://HOST:PORT, not {value!r}")
    if not is_loopback_host(parts.hostname):
        raise click.BadParameter(f"{parts.hostname} is not a loopback address: this is a load generator, it only "
                                 "targets a controller on this machine (127.0.0.1, ::1 or localhost)")
    return value.rstrip("/")


def _mix(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict[str, float] | None:
    if not value:
        return None
    out = dict.fromkeys(KINDS, 0.0)
    for item in value.split(","):
        kind, sep, weight = item.partition("=")
        kind = kind.strip()
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if not sep or kind not in out or w < 0:
            raise click.BadParameter(f"want KIND=WEIGHT,... with KIND one of {', '.join(KINDS)}, not {item!r}")
        out[kind] = w
    if sum(out.values()) <= 0:
        raise click.BadParameter("at least one weight must be positive")
    return out


def _pid(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for value in values:
        label, _, pid = value.rpartition("=")
        if not pid.isdigit():
            raise click.BadParameter(f"want PID or LABEL=PID, not {value!r}")
        if not label:
            label = "controller" if all(lb != "controller" for lb, _ in out) else f"pid {pid}"
        if any(lb == label for lb, _ in out):
            raise click.BadParameter(f"label {label!r} given twice")
        out.append((label, int(pid)))
    return out


def _credentials(admin_token: str | None, controller_dir: Path | None, root_ca: Path | None) -> tuple[str, bytes]:
    token = admin_token
    if token is None and controller_dir is not None:
        try:
            token = (controller_dir / "admin.token").read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read {controller_dir / 'admin.token'}: {exc.strerror}") from None
    if not token:
        raise click.UsageError("no admin token: give --admin-token (or EDGEVOL_TOKEN) or --controller-dir")
    ca_path = root_ca or (controller_dir / "pki" / "root-ca.pem" if controller_dir else None)
    if ca_path is None:
        raise click.UsageError("the controller's root CA is needed to check its signatures: give --root-ca or "
                               "--controller-dir")
    try:
        return token, ca_path.read_bytes()
    except OSError as exc:
        raise click.UsageError(f"cannot read the root CA {ca_path}: {exc.strerror}") from None


def _ms(v: Any) -> str:
    return "—" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _print_human(report: dict[str, Any]) -> None:
    from edgevol.cli.output import console, print_table

    out = console()
    s, p = report["settings"], report["provisioning"]
    out.print(f"fleet of {s['devices']} devices ({p['name_prefix']}-*): {p['created']} provisioned in "
              f"{p['seconds']} s, {p['reused']} reused" + (f" ({p['not_reused']})" if p.get("not_reused") else ""))
    mode = (f"EVE rates, offered {report['offered_per_second']} req/s" if s["mode"] == "eve"
            else f"closed loop, {s['concurrency']} in flight, mix {s['mix']}")
    out.print(f"{mode}, {report['seconds']} s, {s['procs']} simulator process(es)")
    rows = [[k, str(v["count"]), f"{v['per_second']:.1f}", _ms(v["p50_ms"]), _ms(v["p99_ms"]), _ms(v["max_ms"]),
             " ".join(f"{st}×{n}" for st, n in v["statuses"].items()),
             " ".join(f"{e}×{n}" for e, n in v["errors"].items()) or "0"] for k, v in report["kinds"].items()]
    t = report["total"]
    rows.append(["total", str(t["count"]), f"{t['per_second']:.1f}", "", "", "", "", str(t["errors"])])
    print_table(out, "REQUESTS", ["KIND", "COUNT", "REQ/S", "P50 MS", "P99 MS", "MAX MS", "STATUSES", "ERRORS"], rows)
    usage = [["simulator", _ms(report["simulator"]["cpu_s"]), _ms(report["simulator"]["cpu_ms_per_request"]),
              _ms(report["simulator"]["peak_rss_mb"]), ""]]
    for label, u in (report["controller"].get("trees") or {}).items():
        usage.append([label, _ms(u["cpu_s"]), _ms(u["cpu_ms_per_request"]), _ms(u["peak_rss_mb"]),
                      str(u["processes"])])
    if len(report["controller"].get("trees") or {}) > 1:
        c = report["controller"]
        usage.append(["watched, all", _ms(c["cpu_s"]), _ms(c["cpu_ms_per_request"]), _ms(c["peak_rss_mb"]),
                      str(c["processes"])])
    print_table(out, "CPU AND MEMORY", ["WHO", "CPU S", "CPU MS/REQ", "PEAK RSS MB", "PROCESSES"], usage)
    if "schedule_lag_ms" in report:
        lag = report["schedule_lag_ms"]
        out.print(f"schedule lag (due until sent: waiting for a free connection, part of the latencies): p50 "
                  f"{lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms")
    out.print(f"new configs (200) verified during the load: {report['config_verified']}; load average "
              f"{report['load_average']}")


@fleet.command("simulate")
@click.option("--controller", "controller_url", default="http://127.0.0.1:8080", show_default=True,
              callback=_loopback_url, help="The controller's URL; loopback addresses only.")
@click.option("--admin-token", envvar="EDGEVOL_TOKEN", help="Admin token (env EDGEVOL_TOKEN).")
@click.option("--controller-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEVOL_CONTROLLER_DIR",
              help="The controller's --data-dir: reads DIR/admin.token and DIR/pki/root-ca.pem.")
@click.option("--root-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The controller's root CA (default DIR/pki/root-ca.pem): its signatures are checked with it.")
@click.option("--devices", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--duration", type=click.FloatRange(0.1, 86_400), default=60.0, show_default=True,
              help="Seconds of load, after provisioning.")
@click.option("--max-requests", type=click.IntRange(1), help="Stop sending after this many requests.")
@click.option("--mode", type=click.Choice(["eve", "closed"]), default="eve", show_default=True,
              help="eve: every device at EVE's rates (an open loop); closed: --concurrency requests always in "
              "flight, as fast as the controller answers (its capacity).")
@click.option("--concurrency", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Closed loop: requests in flight (over all --procs).")
@click.option("--eve-config-interval", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Seconds between a device's config polls (EVE: 60); 0 sends none.")
@click.option("--eve-metrics-interval", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Seconds between a device's metrics posts (EVE: 60); 0 sends none.")
@click.option("--eve-info-interval", type=click.FloatRange(0), default=300.0, show_default=True,
              help="Seconds between a device's info posts. EVE sends info on change; this models one a device "
              "every 300 s. 0 sends none.")
@click.option("--mix", callback=_mix, metavar="config=W,info=W,metrics=W",
              help="Closed loop: share of each kind (default: in proportion to the EVE intervals).")
@click.option("--procs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Simulator processes (devices split between them), when one would be the bottleneck.")
@click.option("--connections", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="EVE mode: keep-alive connections per simulator process (real devices have one each).")
@click.option("--provision-concurrency", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Devices onboarding at once (per --procs process).")
@click.option("--controller-pid", "controller_pids", multiple=True, callback=_pid, metavar="[LABEL=]PID",
              help="A process whose CPU time and memory, with all its descendants', are reported (repeatable; "
              "e.g. controller=1234 db=5678).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the provisioned fleet (uuids, device keys, integrity tokens; mode 0600) in this file and "
              "reuse it when it matches the controller, adding devices when --devices grows.")
@click.option("--name-prefix", help="Device names PREFIX-00000...; default: the state file's, else fleetsim-RANDOM.")
@click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds before a request counts as failed.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def simulate(controller_url: str, admin_token: str | None, controller_dir: Path | None, root_ca: Path | None,
             devices: int, duration: float, max_requests: int | None, mode: str, concurrency: int,
             eve_config_interval: float, eve_metrics_interval: float, eve_info_interval: float,
             mix: dict[str, float] | None, procs: int, connections: int, provision_concurrency: int,
             controller_pids: list[tuple[str, int]], state_path: Path | None, name_prefix: str | None,
             timeout: float, output: str) -> None:
    """Provision --devices simulated EVE devices, load the controller for --duration, report.

    Provisioning does what an operator and EVE do: one onboarding certificate
    for the batch, each device created through the admin API (NAME-00000,
    serial SN-NAME-00000), then register, uuid, attest (nonce, quote) and a
    first config, all signed and every answer verified. Then each device polls
    its config with the configHash it holds (304 until something changes; a 200
    is verified), posts volume info and volume metrics: at EVE's rates, or in a
    closed loop. Every request is signed afresh with the device's key (real
    devices do; nothing is replayed); info and metrics carry the current time.

    The report gives, per kind, count, answers a second, p50/p99/max latency
    and errors by status (config expects 200/304, info and metrics 201), then
    the CPU seconds of the simulator and of each --controller-pid process tree
    (all descendants included), per request sent, and their peak RSS. At EVE
    rates a request's latency counts from when its device was due to send it,
    so waiting for one of the simulator's --connections counts too (the
    schedule lag line says how much); a request still unsent --timeout seconds
    after it was due fails as "not sent, behind schedule". Exit 1 if any
    request failed, 3 if the run could not start.
    """
    from edgevol.tools import fleetsim

    token, ca = _credentials(admin_token, controller_dir, root_ca)
    intervals = {"config": eve_config_interval, "info": eve_info_interval, "metrics": eve_metrics_interval}
    if not any(intervals.values()) and (mode == "eve" or mix is None):
        raise click.UsageError("every --eve-*-interval is 0: nothing to send (a closed loop can take --mix)")
    opts = fleetsim.Options(controller=controller_url, admin_token=token, root_ca_pem=ca, devices=devices,
                            duration=duration, mode=mode, max_requests=max_requests,  # type: ignore[arg-type]
                            concurrency=concurrency, intervals=intervals, mix=mix, procs=procs,
                            connections=connections, provision_concurrency=provision_concurrency,
                            name_prefix=name_prefix, state_path=state_path, controller_pids=controller_pids,
                            timeout=timeout, progress=sys.stderr.isatty())
    try:
        report = fleetsim.run(opts)
    except fleetsim.FleetError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CANNOT_RUN)
    if output == "json":
        from edgevol.cli.output import print_json

        print_json(report)
    else:
        _print_human(report)
    if report["failed"]:
        click.echo(f"error: {report['total']['errors']} request(s) failed", err=True)
        sys.exit(EXIT_FAILED_REQUESTS)
