"""Load and save an ``EdgeDevConfig`` from a file, binary or protobuf JSON.

Why: the device agent, the CLI and the tests all start from a config file
(a checkpoint, a hand-written demo config, a capture from a controller). One
decoder with one error type means a bad file is always reported the same way:
``ConfigDecodeError`` naming the file and the cause, never a stack trace from
deep inside protobuf.

Format is chosen by suffix: ``.pb``/``.binpb`` binary, ``.json`` JSON; any
other suffix is sniffed (JSON if the text starts with ``{``, else binary, and
the other one is tried if the first fails).

Binary input keeps fields edgevol does not describe (baseos, reboot, ...)
as unknown fields, so re-serialising reproduces them. JSON has no such
escape hatch: an unknown JSON key is an error by default, since in a
hand-written file it is almost always a typo that would otherwise be ignored
silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from google.protobuf.message import DecodeError

from edgevol.api.messages import EdgeDevConfig
from edgevol.fsutil import atomic_write_bytes

__all__ = [
    "BINARY_SUFFIXES",
    "JSON_SUFFIXES",
    "MAX_CONFIG_BYTES",
    "ConfigDecodeError",
    "decode_edge_dev_config",
    "dump_edge_dev_config_json",
    "load_edge_dev_config",
    "save_edge_dev_config",
]

# A config is a list of objects, not content: anything this big is not one.
# Reading stops here, so a wrong path (a disk image, /dev/zero) cannot eat memory.
MAX_CONFIG_BYTES = 64 * 1024 * 1024

BINARY_SUFFIXES = frozenset({".pb", ".binpb"})
JSON_SUFFIXES = frozenset({".json"})

ConfigFormat = Literal["binary", "json", "auto"]


class ConfigDecodeError(ValueError):
    """A config file (or buffer) could not be read or is not an EdgeDevConfig."""


def _decode_binary(data: bytes, source: str) -> EdgeDevConfig:
    cfg = EdgeDevConfig()
    try:
        cfg.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise ConfigDecodeError(
            f"{source}: not a valid binary protobuf EdgeDevConfig: {exc}"
        ) from exc
    return cfg


def _decode_json(data: bytes, source: str, ignore_unknown_fields: bool) -> EdgeDevConfig:
    from google.protobuf import json_format  # a large import a binary config never needs

    cfg = EdgeDevConfig()
    try:
        text = data.decode("utf-8")
        json_format.Parse(text, cfg, ignore_unknown_fields=ignore_unknown_fields)
    except UnicodeDecodeError as exc:
        raise ConfigDecodeError(f"{source}: JSON config is not UTF-8 text: {exc}") from exc
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigDecodeError(
            f"{source}: not a valid protobuf JSON EdgeDevConfig: {exc}"
        ) from exc
    return cfg


def decode_edge_dev_config(
    data: bytes,
    fmt: ConfigFormat = "auto",
    *,
    source: str = "<bytes>",
    ignore_unknown_json_fields: bool = False,
) -> EdgeDevConfig:
    """Decode ``data`` as an EdgeDevConfig; ``source`` names it in errors.

    Empty input is rejected: as a config it would mean "delete everything",
    and an empty file is far more likely a failed write than that intent.
    """
    if not data:
        raise ConfigDecodeError(f"{source}: config is empty")
    if fmt == "binary":
        return _decode_binary(data, source)
    if fmt == "json":
        return _decode_json(data, source, ignore_unknown_json_fields)

    looks_like_json = data.lstrip()[:1] == b"{"
    attempts = ("json", "binary") if looks_like_json else ("binary", "json")
    errors: list[str] = []
    for kind in attempts:
        try:
            if kind == "json":
                return _decode_json(data, source, ignore_unknown_json_fields)
            return _decode_binary(data, source)
        except ConfigDecodeError as exc:
            errors.append(str(exc).removeprefix(f"{source}: "))
    raise ConfigDecodeError(f"{source}: neither format fits: " + "; ".join(errors))


def _format_for(path: Path) -> ConfigFormat:
    suffix = path.suffix.lower()
    if suffix in BINARY_SUFFIXES:
        return "binary"
    if suffix in JSON_SUFFIXES:
        return "json"
    return "auto"


def _read_capped(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigDecodeError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigDecodeError(
            f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes; refusing to load it"
        )
    return data


def load_edge_dev_config(
    path: Path, *, ignore_unknown_json_fields: bool = False
) -> EdgeDevConfig:
    """Read ``path`` as binary or JSON EdgeDevConfig (see module docstring)."""
    path = Path(path)
    return decode_edge_dev_config(
        _read_capped(path),
        _format_for(path),
        source=str(path),
        ignore_unknown_json_fields=ignore_unknown_json_fields,
    )


def dump_edge_dev_config_json(cfg: EdgeDevConfig) -> str:
    """Protobuf JSON with the .proto field names (``generation_count``, ``dsId``).

    Unknown fields are not representable in JSON and are dropped.
    """
    from google.protobuf import json_format

    return json_format.MessageToJson(cfg, preserving_proto_field_name=True, indent=2) + "\n"


def save_edge_dev_config(path: Path, cfg: EdgeDevConfig) -> None:
    """Atomically write ``cfg``: JSON for a ``.json`` path, binary otherwise."""
    path = Path(path)
    if _format_for(path) == "json":
        data = dump_edge_dev_config_json(cfg).encode("utf-8")
    else:
        data = cfg.SerializeToString(deterministic=True)
    atomic_write_bytes(path, data)
