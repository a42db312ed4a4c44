"""Printing results the kubectl way: a table for people, ``-o json`` for scripts."""

from __future__ import annotations

import json
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgevol.device.errors import human_bytes


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def console() -> Console:
    """A console that does not squeeze tables to 80 columns when piped."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=200)


def print_table(console: Console, title: str, columns: Sequence[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for col in columns:
        table.add_column(col, no_wrap=col != "ERROR", overflow="fold")
    for row in rows:
        # Plain Text, not markup: names and ids come from the config and may contain "[/x]".
        table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))
    console.print(table)


def print_status_tables(console: Console, doc: dict[str, Any]) -> None:
    def err(obj: dict[str, Any]) -> str:
        if obj.get("export_error") and not obj.get("error"):  # serving a volume to its apps' tasks
            return err({"error": obj["export_error"]})
        if obj.get("warning") and not obj.get("error"):  # a volume's warning (shared by several apps)
            return "warning: " + obj["warning"]["description"]
        if not obj.get("error"):
            return ""
        retry = obj["error"].get("retry_condition")
        return f"{obj['error']['description']} (retry: {retry})" if retry else obj["error"]["description"]

    print_table(console, "VOLUMES", ["UUID", "GEN", "NAME", "FORMAT", "STATE", "PROGRESS", "MAX", "USED", "REFS",
                                     "ERROR"], [
        [v["uuid"], str(v["generation_count"]), v["display_name"], v.get("format") or "", v["state"],
         f"{v['progress']}%",
         human_bytes(v["max_size_bytes"]), human_bytes(v["cur_size_bytes"]), str(v["ref_count"]), err(v)]
        for v in doc["volumes"]])
    print_table(console, "CONTENT TREES", ["UUID", "NAME", "FORMAT", "SHA256", "STATE", "PROGRESS", "SIZE", "REFS",
                                           "ERROR"], [
        [c["uuid"], c["display_name"], c.get("format") or "", c["sha256"][:12], c["state"], f"{c['progress']}%",
         human_bytes(c["cur_size_bytes"]), str(c["ref_count"]), err(c)] for c in doc["content_trees"]])
    print_table(console, "BLOBS", ["SHA256", "STATE", "PROGRESS", "SIZE", "REFS", "ERROR"], [
        [b["sha256"][:12], b["state"], f"{b['progress']}%", human_bytes(b["size"]), str(b["ref_count"]), err(b)]
        for b in doc["blobs"]])
    if doc.get("apps"):
        print_table(console, "APPS", ["UUID", "NAME", "PURGE", "VOLUMES IN USE", "ERROR"], [
            [a["uuid"], a["display_name"], str(a["purge_counter"]),
             ", ".join(f"{r['uuid'][:8]}#{r['generation_count']}" for r in a["volume_refs"]), err(a)]
            for a in doc["apps"]])
    if doc["config_errors"] or doc["config_source_error"]:
        rows = [[e["kind"], e["id"], e["message"]] for e in doc["config_errors"]]
        if doc["config_source_error"]:
            rows.insert(0, ["config", "-", doc["config_source_error"]])
        print_table(console, "CONFIG ERRORS", ["KIND", "ID", "MESSAGE"], rows)
