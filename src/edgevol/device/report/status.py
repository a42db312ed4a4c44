"""The device's own view of its objects, for ``edgevol device status``."""

from __future__ import annotations

import json
from typing import Any

from edgevol.api import messages as m
from edgevol.device.report.info import wire_state
from edgevol.device.errors import utc_time
from edgevol.device.state import StateStore
from edgevol.device.volumes.files import volume_format


def _state(n: int) -> str:
    return m.ZSwState.Name(n)


def _states(row: dict[str, Any]) -> dict[str, str]:
    """The device's own state, and the one its info message carries (EVE's: no ERROR, no LOADED)."""
    return {"state": _state(row["state"]), "reported_state": _state(wire_state(row))}


def _error(err: dict[str, Any] | None) -> dict[str, Any] | None:
    if not err:
        return None
    return {"description": err["description"], "severity": err["severity"],
            "retry_condition": err["retry_condition"], "time": err["time"]}


def _retries(row: dict[str, Any]) -> dict[str, Any]:
    """Failed attempts of the current round and when the next starts (none while nothing waits)."""
    waiting = bool(row.get("next_retry")) and (row["error"] is not None or row["attempts"] > 0)
    return {"attempts": row["attempts"], "next_attempt": utc_time(row["next_retry"]) if waiting else None}


def status_document(store: StateStore) -> dict[str, Any]:
    volumes = [{
        "uuid": r["uuid"], "generation_count": r["generation"], "display_name": r["display_name"],
        **_states(r), "progress": r["progress"], "max_size_bytes": r["max_size"],
        "cur_size_bytes": r["cur_size"], "path": r["path"], "readonly": bool(r["readonly"]),
        "format": volume_format(r["path"]) if r["path"] else None,
        "ref_count": r["ref_count"], "error": _error(r["error"]), "warning": _error(r.get("warning")),
        "export_error": _error(r.get("export_error")),
        "backing_blob": r.get("backing_blob"),
    } for r in store.all("volumes")]
    users: dict[str, list[dict[str, Any]]] = {}
    for r in store.all("volumes"):
        if r.get("backing_blob"):
            users.setdefault(r["backing_blob"], []).append({"uuid": r["uuid"], "generation_count": r["generation"]})
    trees = [{
        "uuid": r["uuid"], "display_name": r["display_name"], "sha256": r["sha256"],
        "format": (r["spec"] or {}).get("format"), **_states(r), "progress": r["progress"],
        "cur_size_bytes": r["cur_size"],
        "component_sha_list": r["component_shas"] or [], "ref_count": r["ref_count"],
        "error": _error(r["error"]), **_retries(r),
    } for r in store.all("content_trees")]
    blobs = [{
        "sha256": r["sha256"], **_states(r), "progress": r["progress"],
        "size": r["size"], "ref_count": r["ref_count"], "error": _error(r["error"]), **_retries(r),
        "volume_users": users.get(r["sha256"], []),
    } for r in store.all("blobs")]
    apps = [{
        "uuid": r["uuid"], "display_name": r["display_name"], "purge_counter": r["purge_counter"],
        "volume_refs": [{"uuid": u, "generation_count": g} for u, g in r["refs"]], "error": _error(r["error"]),
    } for r in store.all("apps")]
    config = json.loads(store.meta_get("config_status") or "{}")
    return {"volumes": volumes, "content_trees": trees, "blobs": blobs, "apps": apps,
            "config_errors": config.get("errors", []), "config_source_error": config.get("source_error"),
            "legacy_migration": json.loads(store.meta_get("legacy_migration_report") or "null")}
