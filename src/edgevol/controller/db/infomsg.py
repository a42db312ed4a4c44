"""Decode the info messages a device sends into the values stored per object.

Why here and not in the store: the API's conventions (a "deleted" report is
one with only its identity set; blobs arrive as a list; uint64 sizes) are
about the wire, not about storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgevol.controller import records as r
from edgevol.controller.db.checks import clamp
from edgevol.controller.db.errors import Invalid
from edgevol.model import parse


@dataclass(frozen=True)
class ObjectReport:
    """What one info message says about one object."""

    kind: str  # "volume" | "content_tree" | "blob" | "app"
    key: str  # uuid, or sha256 for a blob
    generation: int  # volumes only
    values: dict[str, Any] | None  # reported_objects columns; None: the object is gone
    payload: bytes  # the inner message, serialised deterministically


@dataclass(frozen=True)
class Report:
    """One info or metrics message of one device, decoded and checked: what the store writes for it.

    Decoding happens before a message is queued for the ingestion writer, so
    a malformed message is refused on its own request and never fails a batch.
    """

    device_uuid: str
    at: datetime | None  # the device's timestamp (metrics without one are stamped when stored)
    objects: tuple[ObjectReport, ...] = ()  # an info message
    samples: tuple[tuple[str, dict[str, Any]], ...] = ()  # a metrics message: (volume uuid, columns)


def info_report(device_uuid: str, info: Any) -> Report:
    """A ``ZInfoMsg`` from ``device_uuid``; Invalid if malformed or about another device."""
    if info.devId and info.devId.lower() != device_uuid:
        raise Invalid(f"the info message is for device {info.devId}, not {device_uuid}")
    at = to_datetime(info.atTimeStamp) if info.HasField("atTimeStamp") else None
    return Report(device_uuid, at, objects=tuple(decode_info(info)))


def metrics_report(device_uuid: str, msg: Any) -> Report:
    """A ``ZMetricMsg`` from ``device_uuid``; Invalid if malformed or about another device."""
    if msg.devID and msg.devID.lower() != device_uuid:
        raise Invalid(f"the metrics message is for device {msg.devID}, not {device_uuid}")
    at = to_datetime(msg.atTimeStamp) if msg.HasField("atTimeStamp") else None
    return Report(device_uuid, at, samples=tuple(decode_metrics(msg)))


def to_datetime(stamp: Any) -> datetime | None:
    """A protobuf Timestamp as aware UTC; ``None`` when unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def error_json(has: bool, err: Any) -> dict[str, Any] | None:
    if not has:
        return None
    at = to_datetime(err.timestamp) if err.HasField("timestamp") else None
    return r.ReportedError(description=err.description, severity=err.severity,
                           retry_condition=err.retry_condition, time=at).to_json()


def only_identity(msg: Any, *identity: str) -> bool:
    """The API's "deleted" report: a message with nothing but its identity set."""
    rest = type(msg)()
    rest.CopyFrom(msg)
    for name in identity:
        rest.ClearField(name)
    return rest.ByteSize() == 0


def decode_info(info: Any) -> list[ObjectReport]:
    """One report per volume / content tree / blob / app in a ``ZInfoMsg`` (none for other info types).

    Other types are accepted and not kept: an EVE device sends them all, and
    refusing one would make it retry forever. Of an app only what edgevol's
    device knows is kept: name, state and the first ``appErr``; a report with
    only ``AppID`` set means the app is gone, as EVE's zedagent reports a
    deleted app (pkg/pillar/cmd/zedagent/handlemetrics.go, PublishAppInfoToZedCloud).
    """
    which = info.WhichOneof("InfoContent")
    out: list[ObjectReport] = []
    try:
        if which == "vinfo":
            v = info.vinfo
            key, gen = parse.canonical_uuid(v.uuid.lower(), "volume uuid"), v.generation_count
            if gen < 0:
                raise Invalid(f"volume {key}: generation_count {gen} is negative")
            values = None if only_identity(v, "uuid", "generation_count") else dict(
                display_name=v.displayName, state=v.state, progress=v.progressPercentage,
                max_size_bytes=clamp(v.resources.maxSizeBytes), cur_size_bytes=clamp(v.resources.curSizeBytes),
                ref_count=v.usage.refCount, error=error_json(v.HasField("volumeErr"), v.volumeErr))
            out.append(ObjectReport("volume", key, gen, values, v.SerializeToString(deterministic=True)))
        elif which == "cinfo":
            c = info.cinfo
            key = parse.canonical_uuid(c.uuid.lower(), "content tree uuid")
            values = None if only_identity(c, "uuid", "generation_count") else dict(
                display_name=c.displayName, state=c.state, progress=c.progressPercentage, max_size_bytes=None,
                cur_size_bytes=clamp(c.resources.curSizeBytes), ref_count=c.usage.refCount,
                error=error_json(c.HasField("err"), c.err))
            out.append(ObjectReport("content_tree", key, 0, values, c.SerializeToString(deterministic=True)))
        elif which == "binfo":
            for b in info.binfo.blob:
                key = parse.canonical_sha256(b.sha256)
                if key is None:
                    raise Invalid("a blob report has no sha256")
                values = None if only_identity(b, "sha256") else dict(
                    display_name="", state=b.state, progress=b.progressPercentage, max_size_bytes=None,
                    cur_size_bytes=clamp(b.resources.curSizeBytes), ref_count=b.usage.refCount,
                    error=error_json(b.HasField("err"), b.err))
                out.append(ObjectReport("blob", key, 0, values, b.SerializeToString(deterministic=True)))
        elif which == "ainfo":
            a = info.ainfo
            key = parse.canonical_uuid(a.AppID.lower(), "app uuid")
            values = None if only_identity(a, "AppID") else dict(
                display_name=a.AppName, state=a.state, progress=0, max_size_bytes=None, cur_size_bytes=0,
                ref_count=0, error=error_json(len(a.appErr) > 0, a.appErr[0] if a.appErr else None))
            out.append(ObjectReport("app", key, 0, values, a.SerializeToString(deterministic=True)))
    except parse.Invalid as exc:
        raise Invalid(str(exc)) from None
    for rep in out:
        if rep.values is not None and not 0 <= rep.values["progress"] <= 100:
            raise Invalid(f"{rep.kind} {rep.key}: progressPercentage {rep.values['progress']} is not 0..100")
    return out


def decode_metrics(msg: Any) -> list[tuple[str, dict[str, Any]]]:
    """(volume uuid, column values) per ``ZMetricVolume`` in a ``ZMetricMsg``: every field of it."""
    out = []
    for v in msg.vm:
        try:
            vol = parse.canonical_uuid(v.uuid.lower(), "metric volume uuid")
        except parse.Invalid as exc:
            raise Invalid(str(exc)) from None
        out.append((vol, dict(display_name=v.displayName, total_bytes=clamp(v.totalBytes),
                              used_bytes=clamp(v.usedBytes), free_bytes=clamp(v.freeBytes),
                              read_bytes=clamp(v.readBytes), write_bytes=clamp(v.writeBytes),
                              read_count=clamp(v.readCount), write_count=clamp(v.writeCount))))
    return out
