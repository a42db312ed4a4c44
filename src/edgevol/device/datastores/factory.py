"""Pick the datastore implementation for a configured datastore."""

from __future__ import annotations

from edgevol.device.datastores.base import Datastore, PermanentError
from edgevol.device.datastores.http import HttpDatastore
from edgevol.model.desired import Datastore as DatastoreSpec
from edgevol.model.desired import DatastoreKind


def open_datastore(spec: DatastoreSpec) -> Datastore:
    """Return a client for ``spec`` or raise :class:`PermanentError` if the kind is unsupported."""
    if spec.kind in (DatastoreKind.HTTP, DatastoreKind.HTTPS):
        return HttpDatastore(spec.fqdn, spec.dpath, secure_default=spec.kind is DatastoreKind.HTTPS,
                             api_key=spec.api_key, password=spec.password, ca_pems=spec.ca_pems)
    raise PermanentError(f"datastore kind {spec.kind.value} is not supported by this device yet")
