import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from edgevol.api.eve.common import acipherinfo_pb2 as _acipherinfo_pb2
from edgevol.api.eve.config import appconfig_pb2 as _appconfig_pb2
from edgevol.api.eve.config import datastore_pb2 as _datastore_pb2
from edgevol.api.eve.config import devcommon_pb2 as _devcommon_pb2
from edgevol.api.eve.config import netconfig_pb2 as _netconfig_pb2
from edgevol.api.eve.config import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EdgeDevConfig(_message.Message):
    __slots__ = ("id", "apps", "networks", "datastores", "configItems", "cipherContexts", "contentInfo", "volumes", "controllercert_confighash", "controller_epoch", "config_timestamp")
    ID_FIELD_NUMBER: _ClassVar[int]
    APPS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    DATASTORES_FIELD_NUMBER: _ClassVar[int]
    CONFIGITEMS_FIELD_NUMBER: _ClassVar[int]
    CIPHERCONTEXTS_FIELD_NUMBER: _ClassVar[int]
    CONTENTINFO_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    CONTROLLERCERT_CONFIGHASH_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    id: _devcommon_pb2.UUIDandVersion
    apps: _containers.RepeatedCompositeFieldContainer[_appconfig_pb2.AppInstanceConfig]
    networks: _containers.RepeatedCompositeFieldContainer[_netconfig_pb2.NetworkConfig]
    datastores: _containers.RepeatedCompositeFieldContainer[_datastore_pb2.DatastoreConfig]
    configItems: _containers.RepeatedCompositeFieldContainer[_devcommon_pb2.ConfigItem]
    cipherContexts: _containers.RepeatedCompositeFieldContainer[_acipherinfo_pb2.CipherContext]
    contentInfo: _containers.RepeatedCompositeFieldContainer[_storage_pb2.ContentTree]
    volumes: _containers.RepeatedCompositeFieldContainer[_storage_pb2.Volume]
    controllercert_confighash: str
    controller_epoch: int
    config_timestamp: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[_Union[_devcommon_pb2.UUIDandVersion, _Mapping]] = ..., apps: _Optional[_Iterable[_Union[_appconfig_pb2.AppInstanceConfig, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[_netconfig_pb2.NetworkConfig, _Mapping]]] = ..., datastores: _Optional[_Iterable[_Union[_datastore_pb2.DatastoreConfig, _Mapping]]] = ..., configItems: _Optional[_Iterable[_Union[_devcommon_pb2.ConfigItem, _Mapping]]] = ..., cipherContexts: _Optional[_Iterable[_Union[_acipherinfo_pb2.CipherContext, _Mapping]]] = ..., contentInfo: _Optional[_Iterable[_Union[_storage_pb2.ContentTree, _Mapping]]] = ..., volumes: _Optional[_Iterable[_Union[_storage_pb2.Volume, _Mapping]]] = ..., controllercert_confighash: _Optional[str] = ..., controller_epoch: _Optional[int] = ..., config_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConfigRequest(_message.Message):
    __slots__ = ("configHash", "integrity_token")
    CONFIGHASH_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    configHash: str
    integrity_token: bytes
    def __init__(self, configHash: _Optional[str] = ..., integrity_token: _Optional[bytes] = ...) -> None: ...

class ConfigResponse(_message.Message):
    __slots__ = ("config", "configHash")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CONFIGHASH_FIELD_NUMBER: _ClassVar[int]
    config: EdgeDevConfig
    configHash: str
    def __init__(self, config: _Optional[_Union[EdgeDevConfig, _Mapping]] = ..., configHash: _Optional[str] = ...) -> None: ...
