"""``edgevol <noun> <verb>``: the command line.

Exit codes: 0 success, 1 some object ended in ERROR (or the config has
invalid objects), 2 usage error, 3 the command could not run at all.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from edgevol import log as logsetup

# Everything else a command needs is imported inside it: `device run --once` pays only for what it uses
# (the admin client's httpx, rich's tables and protobuf's JSON support are large imports).

EXIT_OBJECT_ERRORS = 1
EXIT_CANNOT_RUN = 3

output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                               envvar="EDGEVOL_DATA_DIR", help="The device's state directory.")


class _LazyGroup(click.Group):
    """A group whose named subcommands are imported only when they are run (or listed in help)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy and name not in self.commands:
            module, _, attr = self._lazy[name].partition(":")
            import importlib

            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, lazy={"admin": "edgevol.cli.admin:admin", "fleet": "edgevol.cli.fleet:fleet"},
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgevol")
def main() -> None:
    """edgevol: volumes and content for edge devices (EVE volume API)."""


@main.group()
def device() -> None:
    """The device agent and its local state."""


def _lock_data_dir(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise click.ClickException(f"another edgevol agent is running on {data_dir}") from None
    return fd


@device.command("run")
@data_dir_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="EdgeDevConfig as .pb (binary) or .json; re-read when it changes.")
@click.option("--once", is_flag=True, help="Exit when every object is LOADED, CREATED_VOLUME or ERROR.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between reconcile passes.")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
@click.option("--controller", "controller_url", help="Controller URL (EVE API v2), e.g. https://ctrl:8443.")
@click.option("--root-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The controller's root CA certificate (PEM); required with --controller.")
@click.option("--serial", default="", help="Serial number presented when registering.")
@click.option("--soft-serial", default="", help="Software serial, tried by the controller when --serial "
              "does not match (EVE's softSerial).")
@click.option("--trace-wire", type=click.Path(file_okay=False, path_type=Path),
              help="Record every exchange with the controller (bodies in base64) as JSON files in this directory.")
@click.option("--onboard-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Onboarding certificate (default: created under DATA/identity).")
@click.option("--onboard-key", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--poll-interval", type=float, default=10.0, show_default=True, help="Seconds between config polls.")
@click.option("--metrics-interval", type=float, default=60.0, show_default=True)
@click.option("--content-trust", type=click.Path(dir_okay=False, exists=True, path_type=Path), multiple=True,
              help="PEM bundle of CAs trusted to sign content (siginfo), besides the controller's root CA.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Volume creates run at once (downloads are bounded by edgevol.download.parallel).")
def device_run(data_dir: Path, config_path: Path | None, once: bool, interval: float, log_format: str,
               log_level: str, progress: bool | None, controller_url: str | None, root_ca: Path | None,
               serial: str, soft_serial: str, trace_wire: Path | None, onboard_cert: Path | None,
               onboard_key: Path | None, poll_interval: float, metrics_interval: float,
               content_trust: tuple[Path, ...], workers: int) -> None:
    """Reconcile the device with its config: download content, create volumes, report.

    The config comes from --config (a file) or --controller (EVE API v2).
    """
    from edgevol.device.configsource import ConfigSource
    from edgevol.device.reconcile.agent import Agent, AgentOptions

    if bool(config_path) == bool(controller_url):
        raise click.UsageError("give exactly one of --config FILE or --controller URL")
    if controller_url and root_ca is None:
        raise click.UsageError("--controller needs --root-ca (the controller's root CA certificate)")
    logsetup.configure(log_format, log_level)
    lock_fd = _lock_data_dir(data_dir)
    # Signed content must chain to the controller's root CA or to an operator's bundle.
    anchors = b"".join(p.read_bytes().rstrip() + b"\n" for p in ((root_ca,) if root_ca else ()) + content_trust)
    agent = Agent(data_dir, AgentOptions(once=once, workers=workers, content_trust=anchors))
    uplink = None
    if controller_url:
        assert root_ca is not None
        from edgevol.device.uplink.online import UplinkOptions

        uplink = _start_uplink(agent, controller_url, root_ca, onboard_cert, onboard_key, trace_wire,
                               UplinkOptions(serial=serial, soft_serial=soft_serial, poll_interval=poll_interval,
                                             metrics_interval=metrics_interval))
        source: Any = uplink
    else:
        source = ConfigSource(config_path, agent.dirs.checkpoint)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        agent.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def poll() -> None:
        desired = source.poll()
        if desired is not None:
            agent.set_desired(desired)
        agent.record_config_status(source.error)
        if view is not None:
            view.refresh()

    show = sys.stderr.isatty() if progress is None else progress
    if show:  # rich is a large import: only for a terminal
        from rich.console import Console

        from edgevol.cli.progress import ProgressView

    view = ProgressView(agent.store, Console(stderr=True)) if show else None
    try:
        if view is not None:
            with view:
                status = agent.run(poll, interval=interval, stop=stop)
        else:
            status = agent.run(poll, interval=interval, stop=stop)
        if once and source.error and not agent.desired.volumes and not agent.desired.content_trees:
            click.echo(f"error: {source.error}", err=True)
            status = EXIT_OBJECT_ERRORS
    finally:
        if uplink is not None:
            uplink.stop()
        agent.close()
        os.close(lock_fd)
    sys.exit(status)


def _start_uplink(agent: Any, url: str, root_ca: Path, onboard_cert: Path | None, onboard_key: Path | None,
                  trace_wire: Path | None, options: Any) -> Any:
    from edgevol.device.uplink.client import ControllerClient
    from edgevol.device.uplink.identity import (
        controller_certs_path,
        device_credential,
        ecdh_credential,
        onboarding_credential,
    )
    from edgevol.device.uplink.online import Uplink
    from edgevol.device.uplink.wiretrace import WireTrace

    data_dir = agent.dirs.root
    client = ControllerClient(url, root_ca.read_bytes(), device_credential(data_dir),
                              certs_path=controller_certs_path(data_dir),
                              trace=WireTrace(trace_wire) if trace_wire else None)
    uplink = Uplink(client, agent.store, onboarding_credential(data_dir, onboard_cert, onboard_key),
                    agent.dirs.checkpoint, options, ecdh=ecdh_credential(data_dir))
    uplink.start()
    return uplink


def _open_store(data_dir: Path) -> Any:
    from edgevol.device.paths import DataDir
    from edgevol.device.state import StateStore

    db = DataDir(data_dir).state_db
    if not db.exists():
        raise click.ClickException(f"{data_dir} holds no device state (no {db.name}); run 'edgevol device run' first")
    return StateStore(db)


@device.command("status")
@data_dir_option
@output_option
def device_status(data_dir: Path, output: str) -> None:
    """Show every volume, content tree and blob the device knows, with state and progress."""
    from edgevol.cli.output import console, print_json, print_status_tables
    from edgevol.device.report.status import status_document

    store = _open_store(data_dir)
    doc = status_document(store)
    store.close()
    if output == "json":
        print_json(doc)
    else:
        print_status_tables(console(), doc)


@device.command("exports")
@data_dir_option
@output_option
def device_exports(data_dir: Path, output: str) -> None:
    """Show how the device serves volumes to its apps' tasks: sockets, daemon, state and I/O since boot."""
    from edgevol.cli.output import console, print_json, print_table
    from edgevol.device.errors import human_bytes
    from edgevol.device.reconcile.exports import load

    store = _open_store(data_dir)
    found = load(store)
    store.close()
    if output == "json":
        print_json(found)
        return
    rows = []
    for e in found:
        io = e.get("counters")
        served = (f"read {human_bytes(io['read_bytes'])} in {io['read_ops']} ops, written "
                  f"{human_bytes(io['write_bytes'])} in {io['write_ops']} ops") if io else "not counted"
        rows.append([e["uuid"], str(e["generation"]), e["kind"], "ro" if e["readonly"] else "rw",
                     e["state"] + (f" ({e['error']})" if e.get("error") and e["state"] != "running" else ""),
                     "\n".join(f"{name}: {path}" for name, path in sorted(e["sockets"].items())), served])
    print_table(console(), "EXPORTS", ["VOLUME", "GEN", "KIND", "MODE", "STATE", "SOCKETS", "I/O SINCE BOOT"], rows)


@device.command("outbox")
@data_dir_option
@output_option
def device_outbox(data_dir: Path, output: str) -> None:
    """Show the info messages queued for the controller (latest per object)."""
    from google.protobuf import json_format

    from edgevol.api import messages as m
    from edgevol.cli.output import console, print_json, print_table

    store = _open_store(data_dir)
    items = []
    for key, seq, payload in store.outbox_items():
        msg = m.ZInfoMsg.FromString(payload)
        items.append({"key": key, "seq": seq,
                      "message": json_format.MessageToDict(msg, preserving_proto_field_name=True)})
    store.close()
    if output == "json":
        print_json(items)
    else:
        rows = []
        for it in items:
            body = it["message"]
            content = (body.get("vinfo") or body.get("cinfo") or body.get("ainfo")
                       or (body.get("binfo", {}).get("blob") or [{}])[0])
            rows.append([str(it["seq"]), it["key"], content.get("state", "(deleted)" if len(content) <= 2 else ""),
                         str(content.get("progressPercentage", ""))])
        print_table(console(), "OUTBOX", ["SEQ", "OBJECT", "STATE", "PROGRESS"], rows)


@device.command("identity")
@data_dir_option
@output_option
def device_identity(data_dir: Path, output: str) -> None:
    """Show (creating on first use) the onboarding and device certificates to register at a controller."""
    from edgevol.cli.output import print_json
    from edgevol.device.uplink.identity import device_credential, identity_dir, onboarding_credential
    from edgevol.trust.pki import fingerprint

    onboarding = onboarding_credential(data_dir)
    dev = device_credential(data_dir)
    # The fingerprints are sha256 of the DER: what EVE and this device put in senderCertHash.
    doc = {"onboarding_cert_path": str(identity_dir(data_dir) / "onboard.pem"),
           "onboarding_cert_fingerprint": fingerprint(onboarding.cert_pem),
           "device_cert_path": str(identity_dir(data_dir) / "device.pem"),
           "device_cert_fingerprint": fingerprint(dev.cert_pem),
           "onboarding_cert_pem": onboarding.cert_pem.decode()}
    if output == "json":
        print_json(doc)
    else:
        click.echo(f"onboarding certificate: {doc['onboarding_cert_path']}\n"
                   f"  sha256 {doc['onboarding_cert_fingerprint']}\n"
                   f"device certificate: {doc['device_cert_path']}\n"
                   f"  sha256 {doc['device_cert_fingerprint']}")


@main.group()
def config() -> None:
    """Work with EdgeDevConfig files."""


@config.command("validate")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@output_option
def config_validate(path: Path, output: str) -> None:
    """Check a config file object by object, as the device would."""
    from edgevol.api.codec import ConfigDecodeError, load_edge_dev_config
    from edgevol.cli.output import console, print_json, print_table
    from edgevol.model.parse import parse_config

    try:
        cfg = load_edge_dev_config(path, ignore_unknown_json_fields=True)
    except ConfigDecodeError as exc:
        raise click.ClickException(str(exc)) from None
    desired = parse_config(cfg)
    errors = [{"kind": e.kind.value, "id": e.object_id, "message": e.message} for e in desired.errors]
    summary = {"datastores": len(desired.datastores), "content_trees": len(desired.content_trees),
               "volumes": len(desired.volumes), "apps": len(desired.apps), "errors": errors}
    if output == "json":
        print_json(summary)
    else:
        out = console()
        out.print(f"{summary['datastores']} datastores, {summary['content_trees']} content trees, "
                      f"{summary['volumes']} volumes, {summary['apps']} apps valid")
        if errors:
            print_table(out, "INVALID OBJECTS", ["KIND", "ID", "MESSAGE"],
                        [[e["kind"], e["id"], e["message"]] for e in errors])
    sys.exit(EXIT_OBJECT_ERRORS if errors else 0)


@main.group()
def controller() -> None:
    """The controller: EVE API v2 for devices, admin API for operators."""


@controller.command("run")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              envvar="EDGEVOL_CONTROLLER_DIR", help="Keys, admin token and (by default) the SQLite database.")
@click.option("--db", "db_url", envvar="EDGEVOL_DB", help="Database URL (default: SQLite in --data-dir); "
              "postgresql://user@host/db for fleets.")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT")
@click.option("--tls/--no-tls", default=None, help="Default: TLS unless listening on loopback.")
@click.option("--tls-san", "tls_sans", multiple=True, metavar="NAME|IP",
              help="A name or address devices dial, put in the TLS certificate (repeatable). Default: the "
              "listen address, or this host's names and addresses when listening on 0.0.0.0 or ::.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve this TLS certificate (PEM) instead of one issued from the controller's root CA.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The key of --tls-cert.")
@click.option("--encrypt-credentials/--no-encrypt-credentials", "encrypt", default=None,
              help="Send datastore credentials to devices encrypted (cipherData, as EVE's controllers do) or in "
              "clear. Default: encrypted, except for a device connecting over loopback.")
@click.option("--workers", type=click.IntRange(1, 256), envvar="EDGEVOL_CONTROLLER_WORKERS",
              help="Processes serving the listening socket. Default: one per core on PostgreSQL, 1 on SQLite "
              "(whose writes serialise on one file).")
@click.option("--metrics-retention", "metrics_days", type=click.FloatRange(min=0, min_open=True), default=7.0,
              show_default=True, metavar="DAYS", help="Volume metrics older than this are deleted.")
@click.option("--metrics-per-volume", type=click.IntRange(1), default=1000, show_default=True,
              help="Newest samples kept per volume.")
@click.option("--history-limit", type=click.IntRange(1), default=50, show_default=True,
              help="State changes kept per reported object (and generation).")
@click.option("--prune-interval", type=click.FloatRange(min=0), default=300.0, show_default=True, metavar="SECONDS",
              help="How often retention deletes what is past it, in the background (0: never; reads apply the "
              "limits anyway).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True)
def controller_run(data_dir: Path, db_url: str | None, listen: str, tls: bool | None, tls_sans: tuple[str, ...],
                   tls_cert: Path | None, tls_key: Path | None, encrypt: bool | None, workers: int | None,
                   metrics_days: float, metrics_per_volume: int, history_limit: int, prune_interval: float,
                   log_format: str) -> None:
    """Serve devices and operators until stopped (SIGTERM or SIGINT stops every worker)."""
    from edgevol.controller.context import Retention, load_context
    from edgevol.controller.server import serve

    logsetup.configure(log_format, "info")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.UsageError(f"--listen wants HOST:PORT, not {listen!r}")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    mode = "auto" if encrypt is None else "always" if encrypt else "never"
    # Keys, admin token and schema are made here, once, before any worker starts.
    retention = Retention(metrics_days=metrics_days, metrics_per_volume=metrics_per_volume,
                          history_per_object=history_limit, prune_interval_s=prune_interval)
    ctx = load_context(data_dir, db_url, encrypt_credentials=mode, retention=retention)
    postgres = ctx.store.engine.dialect.name == "postgresql"
    if workers is None:
        workers = _cores() if postgres else 1
    elif workers > 1 and not postgres:
        click.echo(f"warning: {workers} workers on SQLite: every write still waits for the one database file; "
                   "use PostgreSQL (--db) to scale out", err=True)
    click.echo(f"root CA for devices: {ctx.root_ca_path}\nadmin token: {data_dir / 'admin.token'}", err=True)
    serve(ctx, host.strip("[]"), int(port), tls=tls, tls_sans=tls_sans, tls_cert=tls_cert, tls_key=tls_key,
          workers=workers, log_format=log_format)


def _cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@main.group()
def datastore() -> None:
    """Local datastores, for demos and tests."""


@datastore.command("serve")
@click.argument("root", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=0, help="0 picks a free port.")
def datastore_serve(root: Path, host: str, port: int) -> None:
    """Serve ROOT over HTTP with Range support, as an HTTP datastore."""
    from edgevol.tools import httpserve

    sys.exit(httpserve.main([str(root), "--host", host, "--port", str(port)]))


