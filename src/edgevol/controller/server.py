"""Serve the controller with uvicorn: plain HTTP on loopback, TLS everywhere else.

The TLS certificate names what devices dial, never merely the listen address:
``--tls-san`` names it explicitly; listening on every address (0.0.0.0 or
::) names this host's names and addresses; ``--tls-cert/--tls-key`` bring an
operator's own certificate instead.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn

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
          log_level: str = "warning") -> None:
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
             root_ca=str(ctx.root_ca_path))
    uvicorn.run(create_app(ctx), host=host, port=port, log_level=log_level, **kwargs)  # type: ignore[arg-type]
