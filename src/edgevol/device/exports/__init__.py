"""Serve volumes to tasks by their access protocol, and count their I/O.

File volumes (qcow2/raw): one qemu-storage-daemon each, NBD (export name = the
volume uuid) and vhost-user-blk on unix sockets plus a QMP monitor, ``readonly``
enforced at the export. Directory volumes: virtiofsd. Sockets and daemon logs
live in the exports dir (0700; sockets 0600). Counters are since boot
(see :mod:`.counters`); directories have none (see :mod:`.virtiofs`).
"""

from .spec import Counters, ExportSpec, ExportStatus
from .supervisor import Exports

__all__ = ["Counters", "ExportSpec", "ExportStatus", "Exports"]
