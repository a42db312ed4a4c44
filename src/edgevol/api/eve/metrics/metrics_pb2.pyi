import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ZMetricVolume(_message.Message):
    __slots__ = ("uuid", "displayName", "readBytes", "writeBytes", "readCount", "writeCount", "totalBytes", "usedBytes", "freeBytes")
    UUID_FIELD_NUMBER: _ClassVar[int]
    DISPLAYNAME_FIELD_NUMBER: _ClassVar[int]
    READBYTES_FIELD_NUMBER: _ClassVar[int]
    WRITEBYTES_FIELD_NUMBER: _ClassVar[int]
    READCOUNT_FIELD_NUMBER: _ClassVar[int]
    WRITECOUNT_FIELD_NUMBER: _ClassVar[int]
    TOTALBYTES_FIELD_NUMBER: _ClassVar[int]
    USEDBYTES_FIELD_NUMBER: _ClassVar[int]
    FREEBYTES_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    displayName: str
    readBytes: int
    writeBytes: int
    readCount: int
    writeCount: int
    totalBytes: int
    usedBytes: int
    freeBytes: int
    def __init__(self, uuid: _Optional[str] = ..., displayName: _Optional[str] = ..., readBytes: _Optional[int] = ..., writeBytes: _Optional[int] = ..., readCount: _Optional[int] = ..., writeCount: _Optional[int] = ..., totalBytes: _Optional[int] = ..., usedBytes: _Optional[int] = ..., freeBytes: _Optional[int] = ...) -> None: ...

class ZMetricMsg(_message.Message):
    __slots__ = ("devID", "atTimeStamp", "vm")
    DEVID_FIELD_NUMBER: _ClassVar[int]
    ATTIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    devID: str
    atTimeStamp: _timestamp_pb2.Timestamp
    vm: _containers.RepeatedCompositeFieldContainer[ZMetricVolume]
    def __init__(self, devID: _Optional[str] = ..., atTimeStamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vm: _Optional[_Iterable[_Union[ZMetricVolume, _Mapping]]] = ...) -> None: ...
