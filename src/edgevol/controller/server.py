"""Serve the controller with uvicorn: plain HTTP on loopback, TLS everywhere else.

The TLS certificate names what devices dial, never merely the listen address:
``--tls-san`` names it explicitly; listening on every address (0.0.0.0 or
::) names this host's names and addresses; ``--tls-cert/--tls-key`` bring an
operator's own certificate instead.

With ``workers`` > 1 this is uvicorn's own supervisor: the parent binds the
socket once and starts that many worker processes accepting on it, each
building its app with :func:`edgevol.controller.app.app_from_env`; the
parent has made keys, TLS certificate, admin token and schema before, so
workers only read them. It restarts a worker that dies and stops them all on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from edgevol.controller import app as controller_app
from edgevol.controller.app import create_app
from edgevol.controller.context import ControllerContext
from edgevol.log import get_logger
from edgevol.netaddr import is_loopback_host
from edgevol.trust.pki import issue, load_or_create

log = get_logger("edgevol.controller")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_names(listen_host: str) -> list[str]:
    """What a device may dial to reach a controller listening on ``listen_host``.

    A wildcard listen address is no name at all: it stands for this host, so
    the certificate names the host name, its fully qualified name, its
    addresses and loopback.
    """
    if listen_host not in ("0.0.0.0", "::", ""):
        return [listen_host]
    names = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"}
    for name in (socket.gethostname(), socket.getfqdn()):
        try:
            names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    return sorted(n for n in names if n)


def tls_files(ctx: ControllerContext, sans: Sequence[str]) -> tuple[Path, Path]:
    """A server certificate from the controller's root CA naming ``sans``, made once per set of names.

    Issued by the same root CA devices are given, so they verify TLS and the
    signed envelopes with one file.
    """
    if not sans:
        raise ValueError("a TLS certificate needs at least one name (--tls-san)")
    ordered = sorted(set(sans))
    ips = [s for s in ordered if _is_ip(s)]
    dns = [s for s in ordered if not _is_ip(s)]
    name = "tls-" + hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:16]
    load_or_create(ctx.data_dir / "pki", name,
                   lambda: issue(ctx.root_ca, (dns or ips)[0], purpose="tls-server", san_ips=ips, san_dns=dns))
    return ctx.data_dir / "pki" / f"{name}.pem", ctx.data_dir / "pki" / f"{name}.key"


def serve(ctx: ControllerContext, host: str, port: int, *, tls: bool | None = None,
          tls_sans: Sequence[str] = (), tls_cert: Path | None = None, tls_key: Path | None = None,
          log_level: str = "warning", workers: int = 1, log_format: str = "auto") -> None:
    use_tls = (not is_loopback_host(host) or tls_cert is not None) if tls is None else tls
    kwargs: dict[str, object] = {}
    if use_tls:
        if tls_cert is not None and tls_key is not None:
            cert, key = tls_cert, tls_key
        else:
            cert, key = tls_files(ctx, list(tls_sans) or host_names(host))
        kwargs.update(ssl_certfile=str(cert), ssl_keyfile=str(key))
        log.info("TLS certificate", path=str(cert), names=list(tls_sans) or host_names(host))
    log.info("controller listening", url=f"{'https' if use_tls else 'http'}://{host}:{port}",
             root_ca=str(ctx.root_ca_path), workers=workers, pid=os.getpid())
    if workers <= 1:
        uvicorn.run(create_app(ctx), host=host, port=port, log_level=log_level, **kwargs)  # type: ignore[arg-type]
    else:
        _serve_workers(ctx, host, port, workers, log_level, log_format, kwargs)


def worker_env(ctx: ControllerContext, log_format: str) -> dict[str, str]:
    """What :func:`edgevol.controller.app.app_from_env` reads in each worker to load ``ctx`` again."""
    return {controller_app.ENV_DATA_DIR: str(ctx.data_dir.resolve()), controller_app.ENV_DB: ctx.store.url,
            controller_app.ENV_ENCRYPT: ctx.encrypt_credentials, controller_app.ENV_LOG_FORMAT: log_format,
            controller_app.ENV_PARENT_PID: str(os.getpid()), **ctx.retention.to_env()}


def _serve_workers(ctx: ControllerContext, host: str, port: int, workers: int, log_level: str, log_format: str,
                   kwargs: dict[str, object]) -> None:
    """uvicorn's Multiprocess supervisor, driven here rather than through ``uvicorn.run`` to see how workers ended.

    A worker that failed before serving (uvicorn's STARTUP_FAILURE: database URL,
    keys, TLS files) makes the supervisor stop; that ends this process with the
    same code, as ``uvicorn.run`` does for a single process.
    """
    from uvicorn.main import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    os.environ.update(worker_env(ctx, log_format))  # spawned workers inherit the environment
    ctx.store.close()  # the parent serves nothing: no database connections kept open in it
    config = uvicorn.Config(f"{controller_app.__name__}:{controller_app.app_from_env.__name__}", factory=True,
                            host=host, port=port, workers=workers, log_level=log_level,
                            **kwargs)  # type: ignore[arg-type]
    sock = config.bind_socket()
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    failed = [p.pid for p in supervisor.processes if p.process.exitcode == STARTUP_FAILURE]
    if failed:
        log.error("controller workers could not start; stopped", pids=failed)
        raise SystemExit(STARTUP_FAILURE)
    log.info("controller stopped", pid=os.getpid(), workers=[p.pid for p in supervisor.processes])
