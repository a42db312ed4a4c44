"""Volumes: the storage application instances mount (file images, directories)."""

from __future__ import annotations

from edgevol.device.volumes.files import FileVolumes, VolumeError, VolumeUsage, parse_name
from edgevol.device.volumes.qemu import CheckResult, ImageInfo, QemuImgError

__all__ = [
    "CheckResult",
    "FileVolumes",
    "ImageInfo",
    "QemuImgError",
    "VolumeError",
    "VolumeUsage",
    "parse_name",
]
