"""edgevol's protobuf layer: the EVE API messages and how to load/save them.

Why a package of its own: everything that crosses the wire or sits in a
config file is one of these messages, and every other part of edgevol should
depend on them through a single place. Import message classes from
``edgevol.api.messages``, config file helpers from ``edgevol.api.codec``; the
generated modules are re-exported here for code that needs a whole module.
"""

from __future__ import annotations

from edgevol.api.eve.auth import auth_pb2
from edgevol.api.eve.certs import certs_pb2
from edgevol.api.eve.common import acipherinfo_pb2, evecommon_pb2, netcmn_pb2
from edgevol.api.eve.config import (
    appconfig_pb2,
    datastore_pb2,
    devcommon_pb2,
    devconfig_pb2,
    netconfig_pb2,
    storage_pb2,
)
from edgevol.api.eve.info import info_pb2
from edgevol.api.eve.metrics import metrics_pb2
from edgevol.api.eve.register import register_pb2

__all__ = [
    "acipherinfo_pb2",
    "appconfig_pb2",
    "auth_pb2",
    "certs_pb2",
    "datastore_pb2",
    "devcommon_pb2",
    "devconfig_pb2",
    "evecommon_pb2",
    "info_pb2",
    "metrics_pb2",
    "netcmn_pb2",
    "netconfig_pb2",
    "register_pb2",
    "storage_pb2",
]
