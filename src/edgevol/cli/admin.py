"""``edgevol admin <noun> <verb>``: the operator's command line over the controller's admin REST API.

Why a CLI and not only curl: operators think in names and sizes ("10GiB"),
want tables, and need exit codes a script can trust — 0 done, 1 the
controller refused (its ``detail`` is printed), 2 usage, 3 the controller
could not be reached at all.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Callable
from urllib.parse import quote

import click
import httpx

from edgevol.cli.output import console, print_json, print_table
from edgevol.device.errors import human_bytes
from edgevol.model.desired import ImageFormat

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
DEFAULT_SERVER = "http://127.0.0.1:8080"

# ---------------------------------------------------------------- sizes

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])i?)?b?\s*$", re.IGNORECASE)
_UNITS = "kmgtp"


def parse_size(text: str) -> int:
    """Bytes from '10GiB', '512MiB', '1G', '4096'. Units are binary, as qemu-img reads them (1G = 1GiB)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; use bytes or a number with K, M, G, T or P "
                         "(binary: 1G = 1GiB = 1073741824 bytes), e.g. 10GiB, 512MiB")
    number, unit = match.groups()
    value = Decimal(number) * (1024 ** (_UNITS.index(unit.lower()) + 1) if unit else 1)
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


class SizeType(click.ParamType):
    """Sizes as options: a bad one is a usage error (exit 2) with the accepted forms spelled out."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()

# ---------------------------------------------------------------- talking to the controller


class AdminError(click.ClickException):
    """A failure the user should read: printed as 'error: ...' with its own exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _detail(resp: httpx.Response) -> str:
    """The server's ``detail``; FastAPI's validation errors (a list) become 'field: message; ...'."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        return resp.text.strip() or resp.reason_phrase
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = ".".join(str(x) for x in item.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", item)))
        return "; ".join(parts)
    return str(detail) if detail is not None else resp.text.strip()


@dataclass
class AdminClient:
    """One controller's admin API. The token is resolved lazily so '--help' never needs one."""

    server: str
    token_source: Callable[[], str]
    verify: ssl.SSLContext | bool = True
    timeout: float = 30.0
    _http: httpx.Client | None = field(default=None, repr=False)

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.server.rstrip("/") + "/api/v1", verify=self.verify,
                                      timeout=self.timeout,
                                      headers={"Authorization": f"Bearer {self.token_source()}"})
        return self._http

    def request(self, method: str, path: str, **kw: Any) -> Any:
        client = self._client()
        try:
            resp = client.request(method, path, **kw)
        except httpx.TransportError as exc:
            hint = ("; give --root-ca (the controller's DIR/pki/root-ca.pem) or --controller-dir"
                    if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "")
            raise AdminError(f"cannot reach the controller at {self.server}: {exc or type(exc).__name__}{hint}",
                             EXIT_UNREACHABLE) from None
        if resp.status_code == 401:
            raise AdminError(f"the controller at {self.server} refused the admin token ({_detail(resp)}); "
                             "check --token / EDGEVOL_TOKEN, --token-file or --controller-dir")
        if resp.status_code >= 400:
            raise AdminError(f"{_detail(resp)} ({resp.status_code} {resp.reason_phrase})")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})


def _path(*segments: str) -> str:
    """An API path; names are quoted, since operators may use any printable character in them."""
    return "/" + "/".join(quote(seg, safe="") for seg in segments)


def _token_source(token: str | None, token_file: Path | None, controller_dir: Path | None) -> Callable[[], str]:
    def read() -> str:
        if token:
            return token.strip()
        path = token_file or (controller_dir / "admin.token" if controller_dir else None)
        if path is None:
            raise click.UsageError("no admin token: give --token (or EDGEVOL_TOKEN), --token-file, "
                                   "or --controller-dir (the controller's --data-dir)")
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read the admin token from {path}: {exc.strerror}") from None
    return read


def _verify(server: str, root_ca: Path | None, controller_dir: Path | None) -> ssl.SSLContext | bool:
    """HTTPS controllers present a certificate from their own root CA; trust that file."""
    if not server.startswith("https://"):
        return True
    if root_ca is None and controller_dir is not None and (controller_dir / "pki" / "root-ca.pem").exists():
        root_ca = controller_dir / "pki" / "root-ca.pem"
    return ssl.create_default_context(cafile=str(root_ca)) if root_ca else True


pass_client = click.make_pass_decorator(AdminClient)
output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")
device_option = click.option("--device", "-d", required=True, help="Device name or uuid.")


@click.group()
@click.option("--server", "-s", envvar="EDGEVOL_SERVER", default=DEFAULT_SERVER, show_default=True,
              help="Controller URL (env EDGEVOL_SERVER).")
@click.option("--token", envvar="EDGEVOL_TOKEN", help="Admin token (env EDGEVOL_TOKEN).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the admin token.")
@click.option("--controller-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEVOL_CONTROLLER_DIR",
              help="The controller's --data-dir: reads DIR/admin.token (and DIR/pki/root-ca.pem for https).")
@click.option("--root-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path), envvar="EDGEVOL_ROOT_CA",
              help="CA certificate to verify an https controller.")
@click.pass_context
def admin(ctx: click.Context, server: str, token: str | None, token_file: Path | None,
          controller_dir: Path | None, root_ca: Path | None) -> None:
    """Manage a controller: devices, datastores, content trees, volumes, apps; see what devices report.

    Sizes are binary (1G = 1GiB); names or uuids work wherever an object is named.
    """
    if not re.match(r"^https?://[^/\s]+", server):
        raise click.BadParameter(f"{server!r} is not an http:// or https:// URL", param_hint="--server")
    ctx.obj = AdminClient(server, _token_source(token, token_file, controller_dir),
                          _verify(server, root_ca, controller_dir))


# ---------------------------------------------------------------- formatting


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def _size(value: int | None) -> str:
    return human_bytes(value) if value else "-"


Row = Callable[[dict[str, Any]], list[str]]


def _show(output: str, data: Any, title: str, columns: list[str], make_row: Callable[[], Row]) -> None:
    """JSON as the server sent it, or a table; ``make_row`` may look up names, so only tables call it."""
    if output == "json":
        print_json(data)
        return
    row = make_row()
    items = data if isinstance(data, list) else [data]
    print_table(console(), title, columns, [row(item) for item in items])


def _done(output: str, data: Any, message: str) -> None:
    """Writes answer with the new record for scripts (-o json) or one line for people."""
    if output == "json":
        print_json(data)
    else:
        click.echo(message)


def _names(client: AdminClient, path: str) -> dict[str, str]:
    return {x["uuid"]: x["name"] for x in client.get(path)}


# ---------------------------------------------------------------- devices

DEVICE_COLUMNS = ["NAME", "UUID", "SERIAL", "REGISTERED", "LAST SEEN", "CONFIG"]


def _device_row(d: dict[str, Any]) -> list[str]:
    return [d["name"], d["uuid"], d["serial"] or "-", _when(d.get("registered_at")) if d.get("registered_at")
            else "no", _when(d.get("last_seen_at")), str(d["config_version"])]


@admin.group("device")
def device_group() -> None:
    """Devices, created with the certificate they onboard with."""


@device_group.command("create")
@click.argument("name")
@click.option("--serial", default="", help="The serial number the device presents.")
@click.option("--onboard-cert", type=click.File("r"), help="PEM onboarding certificate ('edgevol device identity').")
@output_option
@pass_client
def device_create(client: AdminClient, name: str, serial: str, onboard_cert: IO[str] | None, output: str) -> None:
    """Create device NAME; it may register once it presents --onboard-cert."""
    body = {"name": name, "serial": serial, "onboard_cert_pem": onboard_cert.read() if onboard_cert else None}
    d = client.request("POST", "/devices", json=body)
    _done(output, d, f"device {d['name']!r} created ({d['uuid']})")


@device_group.command("list")
@output_option
@pass_client
def device_list(client: AdminClient, output: str) -> None:
    """All devices."""
    _show(output, client.get("/devices"), "DEVICES", DEVICE_COLUMNS, lambda: _device_row)


@device_group.command("get")
@click.argument("device")
@output_option
@pass_client
def device_get(client: AdminClient, device: str, output: str) -> None:
    """One device (-o json includes its certificates)."""
    _show(output, client.get(_path("devices", device)), "DEVICE", DEVICE_COLUMNS, lambda: _device_row)


@device_group.command("delete")
@click.argument("device")
@pass_client
def device_delete(client: AdminClient, device: str) -> None:
    """Delete a device and everything configured for it."""
    client.request("DELETE", _path("devices", device))
    click.echo(f"device {device!r} deleted")


# ---------------------------------------------------------------- datastores

DATASTORE_COLUMNS = ["NAME", "UUID", "TYPE", "FQDN", "DPATH", "CA CERTS"]


def _datastore_row(d: dict[str, Any]) -> list[str]:
    return [d["name"], d["uuid"], d["type_name"], d["fqdn"], d["dpath"] or "-", str(len(d.get("ca_pems") or []))]


@admin.group("datastore")
def datastore_group() -> None:
    """Where devices download content from (shared by all devices)."""


@datastore_group.command("create")
@click.argument("name")
@click.option("--type", "ds_type", required=True,
              type=click.Choice(["DsHttp", "DsHttps", "DsContainerRegistry", "DsS3", "DsAzureBlob", "DsGoogleStorage",
                                 "DsSFTP"], case_sensitive=False))
@click.option("--fqdn", default="", help="e.g. http://host:port, https://host, docker://registry, an S3 endpoint "
              "(empty for AWS), an Azure blob service URL, a GCS endpoint (empty for Google), or SFTP host:port")
@click.option("--dpath", default="", help="Path prefix (HTTP, SFTP), repository namespace, S3 or GCS "
              "bucket[/prefix], or Azure container.")
@click.option("--api-key", default="", help="User name / API key (S3: access key; Azure: account name; SFTP: "
              "user) for the datastore.")
@click.option("--password", default="", help="Password (S3: secret key; Azure: account key or SAS token; GCS: "
              "service-account JSON key) for the datastore (never shown again).")
@click.option("--password-file", type=click.File("r"), default=None,
              help="Read the password from a file ('-': standard input), e.g. a GCS service-account JSON key; "
              "keeps it out of the shell history.")
@click.option("--region", default="")
@click.option("--ca-cert", "ca_certs", type=click.File("r"), multiple=True,
              help="PEM CA certificate the device trusts for this datastore (repeatable).")
@output_option
@pass_client
def datastore_create(client: AdminClient, name: str, ds_type: str, fqdn: str, dpath: str, api_key: str,
                     password: str, password_file: IO[str] | None, region: str, ca_certs: tuple[IO[str], ...],
                     output: str) -> None:
    """Create datastore NAME."""
    if password_file is not None:
        if password:
            raise click.UsageError("give --password or --password-file, not both")
        password = password_file.read().rstrip("\r\n")
    body = {"name": name, "type": ds_type, "fqdn": fqdn, "dpath": dpath, "api_key": api_key,
            "password": password, "region": region, "ca_pems": [f.read() for f in ca_certs]}
    d = client.request("POST", "/datastores", json=body)
    _done(output, d, f"datastore {d['name']!r} created ({d['uuid']})")


@datastore_group.command("list")
@output_option
@pass_client
def datastore_list(client: AdminClient, output: str) -> None:
    """All datastores."""
    _show(output, client.get("/datastores"), "DATASTORES", DATASTORE_COLUMNS, lambda: _datastore_row)


@datastore_group.command("get")
@click.argument("datastore")
@output_option
@pass_client
def datastore_get(client: AdminClient, datastore: str, output: str) -> None:
    """One datastore (secrets are never shown)."""
    _show(output, client.get(_path("datastores", datastore)), "DATASTORE", DATASTORE_COLUMNS, lambda: _datastore_row)


@datastore_group.command("delete")
@click.argument("datastore")
@pass_client
def datastore_delete(client: AdminClient, datastore: str) -> None:
    """Delete a datastore no content tree uses."""
    client.request("DELETE", _path("datastores", datastore))
    click.echo(f"datastore {datastore!r} deleted")


# ---------------------------------------------------------------- content trees

CONTENT_TREE_COLUMNS = ["NAME", "UUID", "DATASTORE", "URL", "FORMAT", "SHA256", "MAX", "GEN"]


def _content_tree_rows(client: AdminClient) -> Row:
    stores = _names(client, "/datastores")

    def row(c: dict[str, Any]) -> list[str]:
        return [c["name"], c["uuid"], stores.get(c["datastore_uuid"], c["datastore_uuid"]), c["url"],
                c["format_name"], (c.get("sha256") or "-")[:12], _size(c["max_size_bytes"]),
                str(c["generation_count"])]
    return row


@admin.group("content-tree")
def content_tree_group() -> None:
    """Images a device downloads from a datastore (per device)."""


def signature_options(f: Any) -> Any:
    """siginfo: a signature made elsewhere (--signature) or here with the operator's key (--sign-key)."""
    for option in reversed((
        click.option("--signature", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="File holding the signature over the content's sha256 (as the device reads it)."),
        click.option("--sign-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                     help="Private key (PEM) to sign the content's sha256 with; sent once, never stored."),
        click.option("--signer-cert", help="URL of the signer's certificate, relative to the datastore."),
        click.option("--intermediate-cert", help="URL of the intermediate certificate(s), relative to the datastore."),
    )):
        f = option(f)
    return f


def _signature_body(signature: Path | None, sign_key: Path | None, signer_cert: str | None,
                    intermediate_cert: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if signature is not None:
        body["signature_base64"] = base64.b64encode(signature.read_bytes()).decode()
    if sign_key is not None:
        body["sign_key_pem"] = sign_key.read_text()
    if signer_cert is not None:
        body["signer_cert_url"] = signer_cert
    if intermediate_cert is not None:
        body["intermediate_cert_url"] = intermediate_cert
    return body


@content_tree_group.command("create")
@click.argument("name")
@device_option
@click.option("--datastore", required=True, help="Datastore name or uuid.")
@click.option("--url", required=True, help="Path under the datastore (or image reference for registries).")
@click.option("--format", "fmt", required=True, type=click.Choice([f.name for f in ImageFormat], case_sensitive=False),
              help="Content format, as the EVE API names it.")
@click.option("--sha256", help="Expected sha256 of the image (hex).")
@click.option("--max-size", type=SIZE, default=0, help="Refuse downloads larger than this (e.g. 1GiB).")
@click.option("--generation", type=int, default=0, help="Bump to force a new download.")
@signature_options
@output_option
@pass_client
def content_tree_create(client: AdminClient, name: str, device: str, datastore: str, url: str, fmt: str,
                        sha256: str | None, max_size: int, generation: int, signature: Path | None,
                        sign_key: Path | None, signer_cert: str | None, intermediate_cert: str | None,
                        output: str) -> None:
    """Create content tree NAME on a device."""
    body = {"name": name, "datastore": datastore, "url": url, "format": fmt.upper(), "sha256": sha256,
            "max_size_bytes": max_size, "generation_count": generation,
            **_signature_body(signature, sign_key, signer_cert, intermediate_cert)}
    c = client.request("POST", _path("devices", device, "content-trees"), json=body)
    _done(output, c, f"content tree {c['name']!r} created ({c['uuid']})")


@content_tree_group.command("list")
@device_option
@output_option
@pass_client
def content_tree_list(client: AdminClient, device: str, output: str) -> None:
    """A device's content trees."""
    data = client.get(_path("devices", device, "content-trees"))
    _show(output, data, "CONTENT TREES", CONTENT_TREE_COLUMNS, lambda: _content_tree_rows(client))


@content_tree_group.command("get")
@click.argument("content_tree")
@device_option
@output_option
@pass_client
def content_tree_get(client: AdminClient, content_tree: str, device: str, output: str) -> None:
    """One content tree."""
    data = client.get(_path("devices", device, "content-trees", content_tree))
    _show(output, data, "CONTENT TREE", CONTENT_TREE_COLUMNS, lambda: _content_tree_rows(client))


@content_tree_group.command("update")
@click.argument("content_tree")
@device_option
@click.option("--name", "new_name", help="Rename.")
@click.option("--url")
@click.option("--sha256")
@click.option("--max-size", type=SIZE)
@click.option("--generation", type=int)
@signature_options
@output_option
@pass_client
def content_tree_update(client: AdminClient, content_tree: str, device: str, new_name: str | None, url: str | None,
                        sha256: str | None, max_size: int | None, generation: int | None, signature: Path | None,
                        sign_key: Path | None, signer_cert: str | None, intermediate_cert: str | None,
                        output: str) -> None:
    """Change some fields of a content tree."""
    body = {k: v for k, v in {"name": new_name, "url": url, "sha256": sha256, "max_size_bytes": max_size,
                              "generation_count": generation}.items() if v is not None}
    body.update(_signature_body(signature, sign_key, signer_cert, intermediate_cert))
    if not body:
        raise click.UsageError("nothing to change: give --name, --url, --sha256, --max-size, --generation or a "
                               "signature option")
    c = client.request("PATCH", _path("devices", device, "content-trees", content_tree), json=body)
    message = f"content tree {c['name']!r} updated"
    if c.get("refetched"):
        message += "\n  the device fetches its content again (no generation is needed for a content tree)"
        if c.get("volumes_keeping_content"):
            message += (f"\n  volumes made from it keep their current content until purged: "
                        f"{', '.join(c['volumes_keeping_content'])}")
    _done(output, c, message)


@content_tree_group.command("delete")
@click.argument("content_tree")
@device_option
@pass_client
def content_tree_delete(client: AdminClient, content_tree: str, device: str) -> None:
    """Delete a content tree no volume uses."""
    client.request("DELETE", _path("devices", device, "content-trees", content_tree))
    click.echo(f"content tree {content_tree!r} deleted")


# ---------------------------------------------------------------- volumes

VOLUME_COLUMNS = ["NAME", "UUID", "ORIGIN", "MAX", "READONLY", "GEN"]


def _volume_rows(client: AdminClient, device: str) -> Row:
    trees = _names(client, _path("devices", device, "content-trees"))

    def row(v: dict[str, Any]) -> list[str]:
        ct = v.get("content_tree_uuid")
        origin = f"from {trees.get(ct, ct)}" if ct else "blank"
        return [v["name"], v["uuid"], origin, _size(v["max_size_bytes"]), "yes" if v["readonly"] else "no",
                str(v["generation_count"])]
    return row


@admin.group("volume")
def volume_group() -> None:
    """Volumes a device creates: blank, or from a content tree."""


@volume_group.command("create")
@click.argument("name")
@device_option
@click.option("--blank", is_flag=True, help="An empty volume of --size.")
@click.option("--from", "content_tree", metavar="CONTENT_TREE", help="Made from this content tree.")
@click.option("--size", type=SIZE, help="Maximum size, e.g. 10GiB (required with --blank).")
@click.option("--readonly", is_flag=True)
@output_option
@pass_client
def volume_create(client: AdminClient, name: str, device: str, blank: bool, content_tree: str | None,
                  size: int | None, readonly: bool, output: str) -> None:
    """Create volume NAME on a device: --blank --size S, or --from CONTENT_TREE [--size S]."""
    if blank == bool(content_tree):
        raise click.UsageError("give exactly one of --blank or --from CONTENT_TREE")
    if blank and not size:
        raise click.UsageError("a blank volume needs --size (e.g. --size 10GiB)")
    body = {"name": name, "origin": "blank" if blank else "download", "content_tree": content_tree,
            "max_size_bytes": size or 0, "readonly": readonly}
    v = client.request("POST", _path("devices", device, "volumes"), json=body)
    _done(output, v, f"volume {v['name']!r} created ({v['uuid']})")


@volume_group.command("list")
@device_option
@output_option
@pass_client
def volume_list(client: AdminClient, device: str, output: str) -> None:
    """A device's volumes (as configured; see 'reported' for what the device did)."""
    data = client.get(_path("devices", device, "volumes"))
    _show(output, data, "VOLUMES", VOLUME_COLUMNS, lambda: _volume_rows(client, device))


@volume_group.command("get")
@click.argument("volume")
@device_option
@output_option
@pass_client
def volume_get(client: AdminClient, volume: str, device: str, output: str) -> None:
    """One volume."""
    data = client.get(_path("devices", device, "volumes", volume))
    _show(output, data, "VOLUME", VOLUME_COLUMNS, lambda: _volume_rows(client, device))


@volume_group.command("update")
@click.argument("volume")
@device_option
@click.option("--name", "new_name", help="Rename.")
@click.option("--size", type=SIZE, help="New maximum size.")
@click.option("--readonly/--read-write", default=None)
@click.option("--purge/--no-purge", default=True, show_default=True,
              help="A new size or read-only flag needs a new generation of the volume on the device: --purge "
                   "makes one and purges the apps using the volume to it; --no-purge refuses such a change.")
@output_option
@pass_client
def volume_update(client: AdminClient, volume: str, device: str, new_name: str | None, size: int | None,
                  readonly: bool | None, purge: bool, output: str) -> None:
    """Change name, size or read-only flag.

    A device never resizes or re-flags a volume in place: such a change makes
    a new generation of the volume, created afresh (blank, or from its content
    tree), and the apps using it move to it with a purge, as 'purge' does.
    The data in the old generation is not carried over.
    """
    body = {k: v for k, v in {"name": new_name, "max_size_bytes": size, "readonly": readonly}.items()
            if v is not None}
    if not body:
        raise click.UsageError("nothing to change: give --name, --size or --readonly/--read-write")
    v = client.request("PATCH", _path("devices", device, "volumes", volume), json=body,
                       params={"purge": "true" if purge else "false"})
    message = f"volume {v['name']!r} updated"
    old = v.get("regenerated_from")
    if old is not None:
        new = v["generation_count"]
        source = "blank" if v["origin"] == "blank" else "from its content tree"
        message += (f": new generation {old} -> {new}\n  the device creates generation {new} afresh ({source}) "
                    f"with the new settings and deletes generation {old} once no app uses it; "
                    f"the data in generation {old} is not carried over")
        apps = v.get("purged_apps") or []
        message += f"\n  apps purged to move to it: {', '.join(apps)}" if apps else "\n  no app uses it"
    _done(output, v, message)


@volume_group.command("purge")
@click.argument("volume")
@device_option
@output_option
@pass_client
def volume_purge(client: AdminClient, volume: str, device: str, output: str) -> None:
    """Recreate the volume from scratch on the device (a new generation)."""
    v = client.request("POST", _path("devices", device, "volumes", volume, "purge"))
    _done(output, v, f"volume {v['name']!r} purged: generation {v['generation_count']}")


@volume_group.command("delete")
@click.argument("volume")
@device_option
@pass_client
def volume_delete(client: AdminClient, volume: str, device: str) -> None:
    """Delete a volume no app uses."""
    client.request("DELETE", _path("devices", device, "volumes", volume))
    click.echo(f"volume {volume!r} deleted")


# ---------------------------------------------------------------- apps

APP_COLUMNS = ["NAME", "UUID", "ACTIVATE", "VOLUMES", "PURGE"]


@admin.group("app")
def app_group() -> None:
    """Apps: what keeps volumes in use on a device."""


def _app_rows(client: AdminClient, device: str) -> Row:
    vols = _names(client, _path("devices", device, "volumes"))

    def row(a: dict[str, Any]) -> list[str]:
        refs = ", ".join(f"{vols.get(r['volume_uuid'], r['volume_uuid'])}#{r['generation_count']}"
                         for r in a["volume_refs"])
        return [a["name"], a["uuid"], "yes" if a["activate"] else "no", refs or "-", str(a["purge_counter"])]
    return row


@app_group.command("create")
@click.argument("name")
@device_option
@click.option("--volume", "volumes", multiple=True, help="Volume name or uuid (repeatable, in order).")
@click.option("--activate/--no-activate", default=True, show_default=True)
@output_option
@pass_client
def app_create(client: AdminClient, name: str, device: str, volumes: tuple[str, ...], activate: bool,
               output: str) -> None:
    """Create app NAME using the given volumes."""
    a = client.request("POST", _path("devices", device, "apps"),
                       json={"name": name, "activate": activate, "volumes": list(volumes)})
    _done(output, a, f"app {a['name']!r} created ({a['uuid']})")


@app_group.command("list")
@device_option
@output_option
@pass_client
def app_list(client: AdminClient, device: str, output: str) -> None:
    """A device's apps and the volumes each uses."""
    data = client.get(_path("devices", device, "apps"))
    _show(output, data, "APPS", APP_COLUMNS, lambda: _app_rows(client, device))


@app_group.command("set-volumes")
@click.argument("app")
@device_option
@click.option("--volume", "volumes", multiple=True, help="Volume name or uuid (repeatable; none clears).")
@output_option
@pass_client
def app_set_volumes(client: AdminClient, app: str, device: str, volumes: tuple[str, ...], output: str) -> None:
    """Replace the volumes an app uses."""
    a = client.request("PUT", _path("devices", device, "apps", app, "volume-refs"), json={"volumes": list(volumes)})
    _done(output, a, f"app {a['name']!r} now uses {len(a['volume_refs'])} volume(s)")


@app_group.command("delete")
@click.argument("app")
@device_option
@pass_client
def app_delete(client: AdminClient, app: str, device: str) -> None:
    """Delete an app (its volumes stay)."""
    client.request("DELETE", _path("devices", device, "apps", app))
    click.echo(f"app {app!r} deleted")


# ---------------------------------------------------------------- what devices report

REPORTED_COLUMNS = ["KIND", "NAME", "GEN", "STATE", "PROGRESS", "MAX", "USED", "REFS", "ERROR"]
_KIND_LABEL = {"content_tree": "content"}  # keeps the table inside a terminal's width


def _error_text(r: dict[str, Any], error_label: str = "") -> str:
    """The reported error's description and retry condition; a warning or a notice says so."""
    err = r.get("error") or {}
    label = {1: "notice: ", 2: "warning: "}.get(err.get("severity", 0), error_label)
    if not err.get("description"):
        return ""
    retry = err.get("retry_condition")
    return label + err["description"] + (f" (retry: {retry})" if retry else "")


def _reported_row(r: dict[str, Any]) -> list[str]:
    err = _error_text(r)
    return [_KIND_LABEL.get(r["kind"], r["kind"]), r["display_name"] or r["object_key"][:12], str(r["generation"]),
            r["state_name"], f"{r['progress']}%", _size(r["max_size_bytes"]), human_bytes(r["cur_size_bytes"]),
            str(r["ref_count"]), err]


def _reported_table(rows: list[dict[str, Any]], title: str, kind: str | None) -> None:
    """One row per object (uuids are in -o json); the KIND column only when kinds are mixed."""
    skip = 1 if kind else 0
    print_table(console(), title, REPORTED_COLUMNS[skip:], [_reported_row(r)[skip:] for r in rows])


def _ident(r: dict[str, Any]) -> tuple[str, str, int]:
    return r["kind"], r["object_key"], r["generation"]


def _pending(client: AdminClient, device: str, kind: str, state: str,
             rows: list[dict[str, Any]]) -> list[str]:
    """What has not reached ``state`` yet: every configured object of ``kind`` must report it.

    Why ask for the configured objects too: a device that has not reported a
    volume at all must not count as done.
    """
    seen = {(r["object_key"], r["generation"]): r for r in rows if r["kind"] == kind}
    if kind == "volume":
        want = {(v["uuid"], v["generation_count"]): v["name"] for v in client.get(_path("devices", device, "volumes"))}
    elif kind == "content_tree":
        want = {(c["uuid"], 0): c["name"] for c in client.get(_path("devices", device, "content-trees"))}
    else:
        want = {k: r["object_key"][:12] for k, r in seen.items()}
    if not want:
        return [f"no {kind.replace('_', ' ')}s yet"]
    pending = []
    for key, name in sorted(want.items(), key=lambda kv: kv[1]):
        r = seen.get(key)
        if r is None:
            pending.append(f"{name} (not reported yet)")
        elif r["state_name"] != state:
            pending.append(f"{name} ({r['state_name']} {r['progress']}%)")
    return pending


def _event_line(r: dict[str, Any]) -> str:
    err = _error_text(r, "error: ")
    name = r["display_name"] or r["object_key"][:12]
    gen = f"#{r['generation']}" if r["kind"] == "volume" else ""
    used = f"  used {human_bytes(r['cur_size_bytes'])}" if r["cur_size_bytes"] else ""
    return (f"{datetime.now():%H:%M:%S}  {r['kind']:<12}  {name + gen:<24}  {r['state_name']:<16} "
            f"{r['progress']:>3}%{used}" + (f"  {err}" if err else ""))


@admin.command("reported")
@device_option
@click.option("--kind", type=click.Choice(["volume", "content_tree", "blob", "app"]), help="Only this kind of object.")
@click.option("--watch", "-w", is_flag=True, help="Keep refreshing until Ctrl-C (or --until-state).")
@click.option("--until-state", metavar="STATE",
              help="With --watch: exit 0 once every configured volume (or --kind object) reports STATE.")
@click.option("--timeout", type=float, help="With --until-state: give up (exit 1) after this many seconds.")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between refreshes.")
@output_option
@pass_client
def reported(client: AdminClient, device: str, kind: str | None, watch: bool, until_state: str | None,
             timeout: float | None, interval: float, output: str) -> None:
    """What a device reports: state, progress, sizes, errors.

    With --watch on a terminal the table redraws in place; otherwise each
    change is printed as one line (or one JSON object with -o json).
    """
    if (until_state or timeout) and not watch:
        raise click.UsageError("--until-state and --timeout need --watch")
    if timeout is not None and not until_state:
        raise click.UsageError("--timeout needs --until-state")
    until = until_state.upper() if until_state else None
    title = f"REPORTED BY {device}"
    if not watch:
        rows = client.get(_path("devices", device, "reported"), kind=kind)
        if output == "json":
            print_json(rows)
        else:
            _reported_table(rows, title, kind)
        return
    sys.exit(_watch(client, device, kind, until, timeout, interval, output, title))


def _watch(client: AdminClient, device: str, kind: str | None, until: str | None, timeout: float | None,
           interval: float, output: str, title: str) -> int:
    from rich.live import Live
    from rich.text import Text

    check_kind = kind or "volume"
    deadline = time.monotonic() + timeout if timeout is not None else None
    live_view = output == "table" and sys.stdout.isatty()
    out = console()
    last: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    live = Live(console=out, auto_refresh=False, transient=False) if live_view else None

    def render(rows: list[dict[str, Any]], note: str) -> None:
        if live is not None:
            with out.capture() as cap:
                _reported_table(rows, title, kind)
            live.update(Text.from_ansi(cap.get() + note), refresh=True)
            return
        for r in rows:
            sig = (r["state_name"], r["progress"], r["cur_size_bytes"], (r.get("error") or {}).get("description"))
            if last.get(_ident(r)) != sig:
                last[_ident(r)] = sig
                if output == "json":
                    click.echo(json.dumps(r, sort_keys=False))
                else:
                    click.echo(_event_line(r))

    try:
        if live is not None:
            live.start()
        while True:
            rows = client.get(_path("devices", device, "reported"), kind=kind)
            pending = _pending(client, device, check_kind, until, rows) if until else []
            note = f"waiting for {until}: {', '.join(pending)}" if pending else ""
            render(rows, note)
            if until and not pending:
                if live is None and output == "table":
                    click.echo(f"every {check_kind.replace('_', ' ')} reports {until}")
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                if live is not None:
                    live.stop()
                    live = None
                click.echo(f"error: timed out after {timeout:g}s waiting for {until}: {', '.join(pending)}", err=True)
                return EXIT_REFUSED
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
    except KeyboardInterrupt:
        return 130 if until else 0
    finally:
        if live is not None:
            live.stop()


@admin.command("history")
@device_option
@click.option("--volume", "-v", help="Volume name or uuid.")
@click.option("--content-tree", "-c", help="Content tree name or uuid.")
@output_option
@pass_client
def history(client: AdminClient, device: str, volume: str | None, content_tree: str | None, output: str) -> None:
    """The states a device reported for one volume or content tree, oldest first."""
    if bool(volume) == bool(content_tree):
        raise click.UsageError("give exactly one of --volume or --content-tree")
    if volume:
        kind, obj = "volume", client.get(_path("devices", device, "volumes", volume))
    else:
        kind, obj = "content_tree", client.get(_path("devices", device, "content-trees", content_tree))
    data = client.get(_path("devices", device, "history"), kind=kind, key=obj["uuid"])
    _show(output, data, f"HISTORY {obj['name']}", ["TIME", "GEN", "STATE"],
          lambda: lambda c: [datetime.fromisoformat(c["at"]).strftime("%H:%M:%S.%f")[:-3], str(c["generation"]),
                             c["state_name"]])


@admin.command("metrics")
@device_option
@click.option("--volume", "-v", required=True, help="Volume name or uuid.")
@click.option("--limit", type=int, default=20, show_default=True, help="Newest samples to show.")
@output_option
@pass_client
def metrics(client: AdminClient, device: str, volume: str, limit: int, output: str) -> None:
    """Samples a device sent for one volume (every field of its ZMetricVolume), oldest first."""
    data = client.get(_path("devices", device, "volumes", volume, "metrics"), limit=limit)
    _show(output, data, f"METRICS {volume}",
          ["TIME", "NAME", "TOTAL", "USED", "FREE", "READ", "WRITTEN", "READ OPS", "WRITE OPS"],
          lambda: lambda s: [_when(s["at"]), s["display_name"] or "-", human_bytes(s["total_bytes"]),
                             human_bytes(s["used_bytes"]), human_bytes(s["free_bytes"]),
                             human_bytes(s["read_bytes"]), human_bytes(s["write_bytes"]),
                             str(s["read_count"]), str(s["write_count"])])


__all__ = ["AdminClient", "AdminError", "SIZE", "admin", "parse_size"]
