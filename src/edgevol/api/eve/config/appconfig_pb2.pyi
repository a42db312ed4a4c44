from edgevol.api.eve.common import acipherinfo_pb2 as _acipherinfo_pb2
from edgevol.api.eve.config import devcommon_pb2 as _devcommon_pb2
from edgevol.api.eve.config import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstanceOpsCmd(_message.Message):
    __slots__ = ("counter", "opsTime")
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    OPSTIME_FIELD_NUMBER: _ClassVar[int]
    counter: int
    opsTime: str
    def __init__(self, counter: _Optional[int] = ..., opsTime: _Optional[str] = ...) -> None: ...

class AppInstanceConfig(_message.Message):
    __slots__ = ("uuidandversion", "displayname", "drives", "activate", "restart", "purge", "userData", "remoteConsole", "cipherData", "volumeRefList")
    UUIDANDVERSION_FIELD_NUMBER: _ClassVar[int]
    DISPLAYNAME_FIELD_NUMBER: _ClassVar[int]
    DRIVES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    USERDATA_FIELD_NUMBER: _ClassVar[int]
    REMOTECONSOLE_FIELD_NUMBER: _ClassVar[int]
    CIPHERDATA_FIELD_NUMBER: _ClassVar[int]
    VOLUMEREFLIST_FIELD_NUMBER: _ClassVar[int]
    uuidandversion: _devcommon_pb2.UUIDandVersion
    displayname: str
    drives: _containers.RepeatedCompositeFieldContainer[_storage_pb2.Drive]
    activate: bool
    restart: InstanceOpsCmd
    purge: InstanceOpsCmd
    userData: str
    remoteConsole: bool
    cipherData: _acipherinfo_pb2.CipherBlock
    volumeRefList: _containers.RepeatedCompositeFieldContainer[VolumeRef]
    def __init__(self, uuidandversion: _Optional[_Union[_devcommon_pb2.UUIDandVersion, _Mapping]] = ..., displayname: _Optional[str] = ..., drives: _Optional[_Iterable[_Union[_storage_pb2.Drive, _Mapping]]] = ..., activate: _Optional[bool] = ..., restart: _Optional[_Union[InstanceOpsCmd, _Mapping]] = ..., purge: _Optional[_Union[InstanceOpsCmd, _Mapping]] = ..., userData: _Optional[str] = ..., remoteConsole: _Optional[bool] = ..., cipherData: _Optional[_Union[_acipherinfo_pb2.CipherBlock, _Mapping]] = ..., volumeRefList: _Optional[_Iterable[_Union[VolumeRef, _Mapping]]] = ...) -> None: ...

class VolumeRef(_message.Message):
    __slots__ = ("uuid", "generationCount", "mount_dir")
    UUID_FIELD_NUMBER: _ClassVar[int]
    GENERATIONCOUNT_FIELD_NUMBER: _ClassVar[int]
    MOUNT_DIR_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    generationCount: int
    mount_dir: str
    def __init__(self, uuid: _Optional[str] = ..., generationCount: _Optional[int] = ..., mount_dir: _Optional[str] = ...) -> None: ...
