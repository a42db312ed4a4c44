import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ZInfoTypes(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZiNop: _ClassVar[ZInfoTypes]
    ZiDevice: _ClassVar[ZInfoTypes]
    ZiApp: _ClassVar[ZInfoTypes]
    ZiNetworkInstance: _ClassVar[ZInfoTypes]
    ZiVolume: _ClassVar[ZInfoTypes]
    ZiContentTree: _ClassVar[ZInfoTypes]
    ZiBlobList: _ClassVar[ZInfoTypes]

class ZSwState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID: _ClassVar[ZSwState]
    INITIAL: _ClassVar[ZSwState]
    DOWNLOAD_STARTED: _ClassVar[ZSwState]
    DOWNLOADED: _ClassVar[ZSwState]
    DELIVERED: _ClassVar[ZSwState]
    INSTALLED: _ClassVar[ZSwState]
    BOOTING: _ClassVar[ZSwState]
    RUNNING: _ClassVar[ZSwState]
    HALTING: _ClassVar[ZSwState]
    HALTED: _ClassVar[ZSwState]
    RESTARTING: _ClassVar[ZSwState]
    PURGING: _ClassVar[ZSwState]
    RESOLVING_TAG: _ClassVar[ZSwState]
    RESOLVED_TAG: _ClassVar[ZSwState]
    CREATING_VOLUME: _ClassVar[ZSwState]
    CREATED_VOLUME: _ClassVar[ZSwState]
    VERIFYING: _ClassVar[ZSwState]
    VERIFIED: _ClassVar[ZSwState]
    LOADING: _ClassVar[ZSwState]
    LOADED: _ClassVar[ZSwState]
    AWAITNETWORKINSTANCE: _ClassVar[ZSwState]
    ERROR: _ClassVar[ZSwState]
    START_DELAYED: _ClassVar[ZSwState]
    PENDING: _ClassVar[ZSwState]
    SCHEDULING: _ClassVar[ZSwState]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_NOTICE: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_ERROR: _ClassVar[Severity]

class Entity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTITY_UNSPECIFIED: _ClassVar[Entity]
    ENTITY_BASE_OS: _ClassVar[Entity]
    ENTITY_SYSTEM_ADAPTER: _ClassVar[Entity]
    ENTITY_VAULT: _ClassVar[Entity]
    ENTITY_ATTESTATION: _ClassVar[Entity]
    ENTITY_APP_INSTANCE: _ClassVar[Entity]
    ENTITY_PORT: _ClassVar[Entity]
    ENTITY_NETWORK: _ClassVar[Entity]
    ENTITY_NETWORK_INSTANCE: _ClassVar[Entity]
    ENTITY_CONTENT_TREE: _ClassVar[Entity]
    ENTITY_CONTENT_BLOB: _ClassVar[Entity]
    ENTITY_VOLUME: _ClassVar[Entity]
ZiNop: ZInfoTypes
ZiDevice: ZInfoTypes
ZiApp: ZInfoTypes
ZiNetworkInstance: ZInfoTypes
ZiVolume: ZInfoTypes
ZiContentTree: ZInfoTypes
ZiBlobList: ZInfoTypes
INVALID: ZSwState
INITIAL: ZSwState
DOWNLOAD_STARTED: ZSwState
DOWNLOADED: ZSwState
DELIVERED: ZSwState
INSTALLED: ZSwState
BOOTING: ZSwState
RUNNING: ZSwState
HALTING: ZSwState
HALTED: ZSwState
RESTARTING: ZSwState
PURGING: ZSwState
RESOLVING_TAG: ZSwState
RESOLVED_TAG: ZSwState
CREATING_VOLUME: ZSwState
CREATED_VOLUME: ZSwState
VERIFYING: ZSwState
VERIFIED: ZSwState
LOADING: ZSwState
LOADED: ZSwState
AWAITNETWORKINSTANCE: ZSwState
ERROR: ZSwState
START_DELAYED: ZSwState
PENDING: ZSwState
SCHEDULING: ZSwState
SEVERITY_UNSPECIFIED: Severity
SEVERITY_NOTICE: Severity
SEVERITY_WARNING: Severity
SEVERITY_ERROR: Severity
ENTITY_UNSPECIFIED: Entity
ENTITY_BASE_OS: Entity
ENTITY_SYSTEM_ADAPTER: Entity
ENTITY_VAULT: Entity
ENTITY_ATTESTATION: Entity
ENTITY_APP_INSTANCE: Entity
ENTITY_PORT: Entity
ENTITY_NETWORK: Entity
ENTITY_NETWORK_INSTANCE: Entity
ENTITY_CONTENT_TREE: Entity
ENTITY_CONTENT_BLOB: Entity
ENTITY_VOLUME: Entity

class DeviceEntity(_message.Message):
    __slots__ = ("entity", "entity_id", "entity_name")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_NAME_FIELD_NUMBER: _ClassVar[int]
    entity: Entity
    entity_id: str
    entity_name: str
    def __init__(self, entity: _Optional[_Union[Entity, str]] = ..., entity_id: _Optional[str] = ..., entity_name: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("description", "timestamp", "severity", "entities", "retry_condition")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_CONDITION_FIELD_NUMBER: _ClassVar[int]
    description: str
    timestamp: _timestamp_pb2.Timestamp
    severity: Severity
    entities: _containers.RepeatedCompositeFieldContainer[DeviceEntity]
    retry_condition: str
    def __init__(self, description: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., severity: _Optional[_Union[Severity, str]] = ..., entities: _Optional[_Iterable[_Union[DeviceEntity, _Mapping]]] = ..., retry_condition: _Optional[str] = ...) -> None: ...

class UsageInfo(_message.Message):
    __slots__ = ("createTime", "refCount", "lastRefcountChangeTime")
    CREATETIME_FIELD_NUMBER: _ClassVar[int]
    REFCOUNT_FIELD_NUMBER: _ClassVar[int]
    LASTREFCOUNTCHANGETIME_FIELD_NUMBER: _ClassVar[int]
    createTime: _timestamp_pb2.Timestamp
    refCount: int
    lastRefcountChangeTime: _timestamp_pb2.Timestamp
    def __init__(self, createTime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., refCount: _Optional[int] = ..., lastRefcountChangeTime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VolumeResources(_message.Message):
    __slots__ = ("maxSizeBytes", "curSizeBytes")
    MAXSIZEBYTES_FIELD_NUMBER: _ClassVar[int]
    CURSIZEBYTES_FIELD_NUMBER: _ClassVar[int]
    maxSizeBytes: int
    curSizeBytes: int
    def __init__(self, maxSizeBytes: _Optional[int] = ..., curSizeBytes: _Optional[int] = ...) -> None: ...

class ZInfoVolume(_message.Message):
    __slots__ = ("uuid", "displayName", "usage", "resources", "state", "progressPercentage", "volumeErr", "generation_count")
    UUID_FIELD_NUMBER: _ClassVar[int]
    DISPLAYNAME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESSPERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    VOLUMEERR_FIELD_NUMBER: _ClassVar[int]
    GENERATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    displayName: str
    usage: UsageInfo
    resources: VolumeResources
    state: ZSwState
    progressPercentage: int
    volumeErr: ErrorInfo
    generation_count: int
    def __init__(self, uuid: _Optional[str] = ..., displayName: _Optional[str] = ..., usage: _Optional[_Union[UsageInfo, _Mapping]] = ..., resources: _Optional[_Union[VolumeResources, _Mapping]] = ..., state: _Optional[_Union[ZSwState, str]] = ..., progressPercentage: _Optional[int] = ..., volumeErr: _Optional[_Union[ErrorInfo, _Mapping]] = ..., generation_count: _Optional[int] = ...) -> None: ...

class ContentResources(_message.Message):
    __slots__ = ("curSizeBytes",)
    CURSIZEBYTES_FIELD_NUMBER: _ClassVar[int]
    curSizeBytes: int
    def __init__(self, curSizeBytes: _Optional[int] = ...) -> None: ...

class ZInfoContentTree(_message.Message):
    __slots__ = ("uuid", "displayName", "sha256", "resources", "usage", "state", "progressPercentage", "err", "componentShaList", "generation_count")
    UUID_FIELD_NUMBER: _ClassVar[int]
    DISPLAYNAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESSPERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    ERR_FIELD_NUMBER: _ClassVar[int]
    COMPONENTSHALIST_FIELD_NUMBER: _ClassVar[int]
    GENERATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    displayName: str
    sha256: str
    resources: ContentResources
    usage: UsageInfo
    state: ZSwState
    progressPercentage: int
    err: ErrorInfo
    componentShaList: _containers.RepeatedScalarFieldContainer[str]
    generation_count: int
    def __init__(self, uuid: _Optional[str] = ..., displayName: _Optional[str] = ..., sha256: _Optional[str] = ..., resources: _Optional[_Union[ContentResources, _Mapping]] = ..., usage: _Optional[_Union[UsageInfo, _Mapping]] = ..., state: _Optional[_Union[ZSwState, str]] = ..., progressPercentage: _Optional[int] = ..., err: _Optional[_Union[ErrorInfo, _Mapping]] = ..., componentShaList: _Optional[_Iterable[str]] = ..., generation_count: _Optional[int] = ...) -> None: ...

class ZInfoBlob(_message.Message):
    __slots__ = ("sha256", "resources", "usage", "state", "progressPercentage", "err")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESSPERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    ERR_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    resources: ContentResources
    usage: UsageInfo
    state: ZSwState
    progressPercentage: int
    err: ErrorInfo
    def __init__(self, sha256: _Optional[str] = ..., resources: _Optional[_Union[ContentResources, _Mapping]] = ..., usage: _Optional[_Union[UsageInfo, _Mapping]] = ..., state: _Optional[_Union[ZSwState, str]] = ..., progressPercentage: _Optional[int] = ..., err: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...

class ZInfoBlobList(_message.Message):
    __slots__ = ("blob",)
    BLOB_FIELD_NUMBER: _ClassVar[int]
    blob: _containers.RepeatedCompositeFieldContainer[ZInfoBlob]
    def __init__(self, blob: _Optional[_Iterable[_Union[ZInfoBlob, _Mapping]]] = ...) -> None: ...

class ZInfoApp(_message.Message):
    __slots__ = ("AppID", "AppName", "appErr", "state", "volumeRefs")
    APPID_FIELD_NUMBER: _ClassVar[int]
    APPNAME_FIELD_NUMBER: _ClassVar[int]
    APPERR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VOLUMEREFS_FIELD_NUMBER: _ClassVar[int]
    AppID: str
    AppName: str
    appErr: _containers.RepeatedCompositeFieldContainer[ErrorInfo]
    state: ZSwState
    volumeRefs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, AppID: _Optional[str] = ..., AppName: _Optional[str] = ..., appErr: _Optional[_Iterable[_Union[ErrorInfo, _Mapping]]] = ..., state: _Optional[_Union[ZSwState, str]] = ..., volumeRefs: _Optional[_Iterable[str]] = ...) -> None: ...

class ZInfoMsg(_message.Message):
    __slots__ = ("ztype", "devId", "ainfo", "vinfo", "cinfo", "binfo", "atTimeStamp")
    ZTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVID_FIELD_NUMBER: _ClassVar[int]
    AINFO_FIELD_NUMBER: _ClassVar[int]
    VINFO_FIELD_NUMBER: _ClassVar[int]
    CINFO_FIELD_NUMBER: _ClassVar[int]
    BINFO_FIELD_NUMBER: _ClassVar[int]
    ATTIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ztype: ZInfoTypes
    devId: str
    ainfo: ZInfoApp
    vinfo: ZInfoVolume
    cinfo: ZInfoContentTree
    binfo: ZInfoBlobList
    atTimeStamp: _timestamp_pb2.Timestamp
    def __init__(self, ztype: _Optional[_Union[ZInfoTypes, str]] = ..., devId: _Optional[str] = ..., ainfo: _Optional[_Union[ZInfoApp, _Mapping]] = ..., vinfo: _Optional[_Union[ZInfoVolume, _Mapping]] = ..., cinfo: _Optional[_Union[ZInfoContentTree, _Mapping]] = ..., binfo: _Optional[_Union[ZInfoBlobList, _Mapping]] = ..., atTimeStamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
