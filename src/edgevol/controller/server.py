"""Serve the controller with uvicorn: plain HTTP on loopback, TLS everywhere else."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import structlog
import uvicorn

from edgevol.controller.app import create_app
from edgevol.controller.context import ControllerContext
from edgevol.device.datastores.oci_refs import is_loopback_host
from edgevol.trust.pki import issue, load_or_create

log = structlog.get_logger("edgevol.controller")


def tls_files(ctx: ControllerContext, host: str) -> tuple[Path, Path]:
    """A server certificate from the controller's root CA, so devices verify TLS with the same root."""
    try:
        ipaddress.ip_address(host)
        sans = {"san_ips": [host]}
    except ValueError:
        sans = {"san_dns": [host]}
    name = f"tls-{host.replace(':', '_')}"
    load_or_create(ctx.data_dir / "pki", name,
                   lambda: issue(ctx.root_ca, host, purpose="tls-server", **sans))  # type: ignore[arg-type]
    return ctx.data_dir / "pki" / f"{name}.pem", ctx.data_dir / "pki" / f"{name}.key"


def serve(ctx: ControllerContext, host: str, port: int, *, tls: bool | None = None,
          log_level: str = "warning") -> None:
    use_tls = not is_loopback_host(host) if tls is None else tls
    kwargs: dict[str, object] = {}
    if use_tls:
        cert, key = tls_files(ctx, host)
        kwargs.update(ssl_certfile=str(cert), ssl_keyfile=str(key))
    log.info("controller listening", url=f"{'https' if use_tls else 'http'}://{host}:{port}",
             root_ca=str(ctx.root_ca_path))
    uvicorn.run(create_app(ctx), host=host, port=port, log_level=log_level, **kwargs)  # type: ignore[arg-type]
