"""Turn status rows into the API's info messages (``ZInfoMsg`` with vinfo/cinfo/binfo)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from edgevol.api import messages as m
from edgevol.device.state import ErrorRecord

_SEVERITY = {"notice": m.Severity.SEVERITY_NOTICE, "warning": m.Severity.SEVERITY_WARNING,
             "error": m.Severity.SEVERITY_ERROR}
_ENTITY = {"content_tree": m.Entity.ENTITY_CONTENT_TREE, "blob": m.Entity.ENTITY_CONTENT_BLOB,
           "volume": m.Entity.ENTITY_VOLUME, "app": m.Entity.ENTITY_APP_INSTANCE}


def wire_state(row: dict[str, Any]) -> int:
    """The state as EVE reports it, which is not always the state the device keeps.

    EVE sends DELIVERED for content loaded into its store (pkg/pillar/types/types.go,
    ``SwState.ZSwState``: LOADED -> DELIVERED), and an object with a problem keeps the
    state its progress stopped at, the problem travelling in its ErrorInfo.
    """
    state = row["stopped_state"] if row["state"] == m.ZSwState.ERROR else row["state"]
    return m.ZSwState.DELIVERED if state == m.ZSwState.LOADED else state


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def volume_error(row: dict[str, Any]) -> dict[str, Any] | None:
    """What a volume reports in ``volumeErr``: its own error, else its export's (reconcile/exports.py), else its
    warning (reconcile/sharing.py)."""
    return row["error"] or row.get("export_error") or row.get("warning")


def error_info(err: ErrorRecord | dict[str, Any] | None) -> Any:
    if isinstance(err, dict):
        err = ErrorRecord.from_dict(err)
    if err is None:
        return None
    info = m.ErrorInfo(description=err.description, severity=_SEVERITY.get(err.severity, 0),
                       retry_condition=err.retry_condition)
    info.timestamp.CopyFrom(timestamp(err.time))
    if err.entity:
        info.entities.add(entity=_ENTITY.get(err.entity, 0), entity_id=err.entity_id,
                          entity_name=err.entity_name)
    return info


def usage_info(row: dict[str, Any]) -> Any:
    usage = m.UsageInfo(refCount=row["ref_count"])
    usage.createTime.CopyFrom(timestamp(row["create_time"]))
    usage.lastRefcountChangeTime.CopyFrom(timestamp(row["ref_change_time"]))
    return usage


def volume_info(row: dict[str, Any]) -> Any:
    info = m.ZInfoVolume(uuid=row["uuid"], displayName=row["display_name"], state=wire_state(row),
                         progressPercentage=row["progress"], generation_count=row["generation"])
    info.usage.CopyFrom(usage_info(row))
    info.resources.maxSizeBytes = row["max_size"]
    info.resources.curSizeBytes = row["cur_size"]
    err = error_info(volume_error(row))
    if err is not None:
        info.volumeErr.CopyFrom(err)
    return info


def content_tree_info(row: dict[str, Any]) -> Any:
    info = m.ZInfoContentTree(uuid=row["uuid"], displayName=row["display_name"], sha256=row["sha256"],
                              state=wire_state(row), progressPercentage=row["progress"],
                              generation_count=row["generation"],
                              componentShaList=row["component_shas"] or [])
    info.resources.curSizeBytes = row["cur_size"]
    info.usage.CopyFrom(usage_info(row))
    err = error_info(row["error"])
    if err is not None:
        info.err.CopyFrom(err)
    return info


def blob_info(row: dict[str, Any]) -> Any:
    info = m.ZInfoBlob(sha256=row["sha256"], state=wire_state(row), progressPercentage=row["progress"])
    info.resources.curSizeBytes = row["size"] if row["state"] == m.ZSwState.LOADED else row["done_bytes"]
    info.usage.CopyFrom(usage_info(row))
    err = error_info(row["error"])
    if err is not None:
        info.err.CopyFrom(err)
    return info


def wrap(device_id: str, content: Any, at: float) -> Any:
    """Put one vinfo/cinfo/binfo into a ``ZInfoMsg``."""
    msg = m.ZInfoMsg(devId=device_id)
    if isinstance(content, m.ZInfoVolume):
        msg.ztype = m.ZInfoTypes.ZiVolume
        msg.vinfo.CopyFrom(content)
    elif isinstance(content, m.ZInfoContentTree):
        msg.ztype = m.ZInfoTypes.ZiContentTree
        msg.cinfo.CopyFrom(content)
    else:
        msg.ztype = m.ZInfoTypes.ZiBlobList
        blobs = m.ZInfoBlobList()
        blobs.blob.append(content)
        msg.binfo.CopyFrom(blobs)
    msg.atTimeStamp.CopyFrom(timestamp(at))
    return msg
