from edgevol.api.eve.common import netcmn_pb2 as _netcmn_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkConfig(_message.Message):
    __slots__ = ("id", "entProxy")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENTPROXY_FIELD_NUMBER: _ClassVar[int]
    id: str
    entProxy: _netcmn_pb2.ProxyConfig
    def __init__(self, id: _Optional[str] = ..., entProxy: _Optional[_Union[_netcmn_pb2.ProxyConfig, _Mapping]] = ...) -> None: ...
