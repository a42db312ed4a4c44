"""Content formats by number and name: eve-api's ``Format`` enum plus edgevol's BLOB_TREE.

BLOB_TREE (an OCI artifact whose blobs are plain files, the seed's "blob tree")
is not in eve-api. Its number, 1000, is far above eve-api's values (0..10 today),
so a format EVE adds later does not take it; a device that does not know it
refuses the content tree as an unknown format, as it should.
"""

from __future__ import annotations

from edgevol.api.messages import Format

BLOB_TREE = 1000
_EXTRA = {BLOB_TREE: "BLOB_TREE"}


def format_name(number: int) -> str:
    """``RAW``, ``BLOB_TREE``, ...; the number itself for one nobody knows."""
    if number in _EXTRA:
        return _EXTRA[number]
    try:
        return str(Format.Name(number))
    except ValueError:
        return str(number)


def format_number(value: int | str) -> int:
    """The number of a format given by number or (case-insensitive) name; ValueError if unknown."""
    if isinstance(value, int):
        if value in _EXTRA or value in Format.values():
            return value
        raise ValueError(f"unknown format {value}")
    name = value.strip().upper()
    for number, extra in _EXTRA.items():
        if name == extra:
            return number
    return int(Format.Value(name))
