"""The operator's REST API (JSON, OpenAPI at /openapi.json), behind a bearer token.

Operators create devices, datastores, content trees, volumes and apps here,
explicitly, as the volume API asks; and read back what each device reports.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from edgevol.api import messages as m
from edgevol.api.formats import format_name
from edgevol.controller.context import ControllerContext
from edgevol.controller.store import UNSET, Conflict, Invalid, NotFound
from edgevol.model.desired import ImageFormat

PREFIX = "/api/v1"


def to_json(record: Any) -> Any:
    """A store record as JSON: enums by name, PEM as text, secrets never."""
    if isinstance(record, list | tuple):
        return [to_json(r) for r in record]
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if not f.repr and f.name not in ("onboard_cert_pem", "device_cert_pem", "ca_pems"):
            continue  # api_key, password and raw payloads stay inside
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bytes):
            value = value.decode(errors="replace") if f.name.endswith("_pem") else value.hex()
        elif dataclasses.is_dataclass(value):
            value = to_json(value)
        elif isinstance(value, tuple):
            value = [to_json(v) if dataclasses.is_dataclass(v) else
                     (v.decode() if isinstance(v, bytes) else v) for v in value]
        data[f.name] = value
    for name, enum in (("type", m.DsType), ("state", m.ZSwState)):
        if name in data and isinstance(data[name], int):
            data[f"{name}_name"] = enum.Name(data[name])
    if isinstance(data.get("format"), int):
        data["format_name"] = format_name(data["format"])
    return data


class DeviceIn(BaseModel):
    name: str
    serial: str = ""
    onboard_cert_pem: str | None = Field(None, description="PEM of the onboarding certificate the device presents")


class DatastoreIn(BaseModel):
    name: str
    type: str = Field(description="DsType name: DsHttp, DsHttps, DsContainerRegistry, ...")
    fqdn: str
    dpath: str = ""
    api_key: str = ""
    password: str = ""
    region: str = ""
    ca_pems: list[str] = []


class ContentTreeIn(BaseModel):
    name: str
    datastore: str = Field(description="datastore uuid or name")
    url: str
    format: str = Field(description=f"one of {', '.join(f.name for f in ImageFormat)}")
    sha256: str | None = None
    max_size_bytes: int = 0
    generation_count: int = 0
    signature_base64: str | None = Field(None, description="siginfo.signature, base64 of its bytes")
    signer_cert_url: str = Field("", description="siginfo.signercerturl, relative to the datastore")
    intermediate_cert_url: str = Field("", description="siginfo.intercertsurl, relative to the datastore")
    sign_key_pem: str | None = Field(None, description="a private key (PEM) to sign the sha256 with here; "
                                     "used once, never stored")


class ContentTreePatch(BaseModel):
    name: str | None = None
    url: str | None = None
    sha256: str | None = None
    max_size_bytes: int | None = None
    generation_count: int | None = None
    signature_base64: str | None = None
    signer_cert_url: str | None = None
    intermediate_cert_url: str | None = None
    sign_key_pem: str | None = None


def _signature_fields(body: ContentTreeIn | ContentTreePatch) -> dict[str, Any]:
    """siginfo fields of a request as the store takes them (bytes), leaving out what was not given."""
    out: dict[str, Any] = {}
    if body.signature_base64 is not None:
        try:
            out["signature"] = base64.b64decode(body.signature_base64, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("signature_base64 is not base64") from None
    if body.sign_key_pem is not None:
        out["sign_key_pem"] = body.sign_key_pem.encode()
    for name in ("signer_cert_url", "intermediate_cert_url"):
        value = getattr(body, name)
        if value is not None and (value or isinstance(body, ContentTreePatch)):
            out[name] = value
    return out


class VolumeIn(BaseModel):
    name: str
    origin: Literal["blank", "download"]
    content_tree: str | None = Field(None, description="content tree uuid or name (origin download)")
    max_size_bytes: int = 0
    readonly: bool = False


class VolumePatch(BaseModel):
    name: str | None = None
    max_size_bytes: int | None = None
    readonly: bool | None = None


class AppIn(BaseModel):
    name: str
    activate: bool = True
    volumes: list[str] = Field([], description="volume uuids or names")


class VolumeRefsIn(BaseModel):
    volumes: list[str]


def _patch(model: BaseModel) -> dict[str, Any]:
    return {k: (v if v is not None else UNSET) for k, v in model.model_dump().items() if v is not None}


def router(ctx: ControllerContext) -> APIRouter:
    bearer = HTTPBearer(auto_error=False)

    def authorized(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if cred is None or not hmac.compare_digest(cred.credentials, ctx.admin_token):
            raise HTTPException(401, "a valid admin token is required (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})

    s = ctx.store
    r = APIRouter(prefix=PREFIX, dependencies=[Depends(authorized)], tags=["admin"])

    @r.get("/devices")
    def list_devices() -> Any:
        return to_json(s.list_devices())

    @r.get("/fleet")
    def fleet() -> Any:
        """One row per device: registered, last seen, config version taken, reported objects by state."""
        return [{"uuid": f.device.uuid, "name": f.device.name, "serial": f.device.serial,
                 "registered": f.device.registered,
                 "last_seen_at": f.device.last_seen_at.isoformat() if f.device.last_seen_at else None,
                 "config_version": f.device.config_version, "config_acked_version": f.device.config_acked_version,
                 "counts": f.counts, "errors": f.errors} for f in s.fleet()]

    @r.post("/devices", status_code=201)
    def create_device(body: DeviceIn) -> Any:
        pem = body.onboard_cert_pem.encode() if body.onboard_cert_pem else None
        return to_json(s.create_device(body.name, body.serial, pem))

    @r.get("/devices/{device}")
    def get_device(device: str) -> Any:
        return to_json(s.get_device(device))

    @r.delete("/devices/{device}", status_code=204)
    def delete_device(device: str) -> None:
        s.delete_device(device)

    @r.get("/datastores")
    def list_datastores() -> Any:
        return to_json(s.list_datastores())

    @r.post("/datastores", status_code=201)
    def create_datastore(body: DatastoreIn) -> Any:
        return to_json(s.create_datastore(body.name, body.type, body.fqdn, dpath=body.dpath, api_key=body.api_key,
                                          password=body.password, region=body.region, ca_pems=body.ca_pems))

    @r.get("/datastores/{ref}")
    def get_datastore(ref: str) -> Any:
        return to_json(s.get_datastore(ref))

    @r.delete("/datastores/{ref}", status_code=204)
    def delete_datastore(ref: str) -> None:
        s.delete_datastore(ref)

    @r.get("/devices/{device}/content-trees")
    def list_content_trees(device: str) -> Any:
        return to_json(s.list_content_trees(device))

    @r.post("/devices/{device}/content-trees", status_code=201)
    def create_content_tree(device: str, body: ContentTreeIn) -> Any:
        return to_json(s.create_content_tree(device, body.name, body.datastore, body.url, body.format,
                                             sha256=body.sha256, max_size_bytes=body.max_size_bytes,
                                             generation_count=body.generation_count, **_signature_fields(body)))

    @r.get("/devices/{device}/content-trees/{ref}")
    def get_content_tree(device: str, ref: str) -> Any:
        return to_json(s.get_content_tree(ref, device))

    @r.patch("/devices/{device}/content-trees/{ref}")
    def update_content_tree(device: str, ref: str, body: ContentTreePatch) -> Any:
        """The content tree, with ``refetched`` (the device fetches it again) and the volumes made from it,
        which keep their content until purged."""
        plain = _patch(body.model_copy(update={"signature_base64": None, "signer_cert_url": None,
                                               "intermediate_cert_url": None, "sign_key_pem": None}))
        done = s.update_content_tree(ref, device=device, **plain, **_signature_fields(body))
        return {**to_json(done.content_tree), "refetched": done.refetched,
                "volumes_keeping_content": list(done.volumes_keeping_content)}

    @r.delete("/devices/{device}/content-trees/{ref}", status_code=204)
    def delete_content_tree(device: str, ref: str) -> None:
        s.delete_content_tree(ref, device)

    @r.get("/devices/{device}/volumes")
    def list_volumes(device: str) -> Any:
        return to_json(s.list_volumes(device))

    @r.post("/devices/{device}/volumes", status_code=201)
    def create_volume(device: str, body: VolumeIn) -> Any:
        if (body.origin == "download") != (body.content_tree is not None):
            raise HTTPException(422, "origin download needs content_tree; origin blank must not have one")
        return to_json(s.create_volume(device, body.name, max_size_bytes=body.max_size_bytes,
                                       content_tree=body.content_tree, readonly=body.readonly))

    @r.get("/devices/{device}/volumes/{ref}")
    def get_volume(device: str, ref: str) -> Any:
        return to_json(s.get_volume(ref, device))

    @r.patch("/devices/{device}/volumes/{ref}")
    def update_volume(device: str, ref: str, body: VolumePatch, purge: bool = True) -> Any:
        """A new size or read-only flag needs a new generation of the volume on the device: it is made, and
        the apps using the volume purged to it, unless ``purge=false``, which refuses such a change (409).
        The answer is the volume with ``regenerated_from`` (the generation replaced, or null) and
        ``purged_apps``."""
        done = s.update_volume(ref, device=device, purge=purge, **_patch(body))
        return {**to_json(done.volume), "regenerated_from": done.regenerated_from,
                "purged_apps": list(done.purged_apps)}

    @r.post("/devices/{device}/volumes/{ref}/purge")
    def purge_volume(device: str, ref: str) -> Any:
        return to_json(s.purge_volume(ref, device))

    @r.delete("/devices/{device}/volumes/{ref}", status_code=204)
    def delete_volume(device: str, ref: str) -> None:
        s.delete_volume(ref, device)

    @r.get("/devices/{device}/apps")
    def list_apps(device: str) -> Any:
        return to_json(s.list_apps(device))

    @r.post("/devices/{device}/apps", status_code=201)
    def create_app(device: str, body: AppIn) -> Any:
        return to_json(s.create_app(device, body.name, activate=body.activate, volumes=body.volumes))

    @r.put("/devices/{device}/apps/{ref}/volume-refs")
    def set_volume_refs(device: str, ref: str, body: VolumeRefsIn) -> Any:
        return to_json(s.set_app_volume_refs(ref, body.volumes, device))

    @r.delete("/devices/{device}/apps/{ref}", status_code=204)
    def delete_app(device: str, ref: str) -> None:
        s.delete_app(ref, device)

    @r.get("/devices/{device}/reported")
    def reported(device: str, kind: Literal["volume", "content_tree", "blob", "app"] | None = None) -> Any:
        return to_json(s.reported(device, kind))

    @r.get("/devices/{device}/history")
    def history(device: str, kind: str, key: str, generation: int | None = None) -> Any:
        return to_json(s.history(device, kind, key, generation))

    @r.get("/devices/{device}/volumes/{volume}/metrics")
    def volume_metrics(device: str, volume: str, limit: int = 100) -> Any:
        vol = s.get_volume(volume, device)
        return to_json(s.volume_metrics(device, vol.uuid, limit))

    return r


def install_error_handlers(app: FastAPI) -> None:
    """Store errors become clear HTTP answers instead of 500s."""
    for exc_type, status in ((NotFound, 404), (Conflict, 409), (Invalid, 422)):
        def handler(_request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)
        app.add_exception_handler(exc_type, handler)  # type: ignore[arg-type]

    def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # e.g. the first request on a connection PostgreSQL dropped when it restarted
        return JSONResponse({"detail": f"the database is not available, retry: {str(exc).splitlines()[0]}"},
                            status_code=503, headers={"Retry-After": "1"})
    app.add_exception_handler(OperationalError, unavailable)  # type: ignore[arg-type]
