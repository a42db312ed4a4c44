from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class proxyProto(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROXY_HTTP: _ClassVar[proxyProto]
    PROXY_HTTPS: _ClassVar[proxyProto]
    PROXY_SOCKS: _ClassVar[proxyProto]
    PROXY_FTP: _ClassVar[proxyProto]
    PROXY_OTHER: _ClassVar[proxyProto]
PROXY_HTTP: proxyProto
PROXY_HTTPS: proxyProto
PROXY_SOCKS: proxyProto
PROXY_FTP: proxyProto
PROXY_OTHER: proxyProto

class ProxyServer(_message.Message):
    __slots__ = ("proto", "server", "port")
    PROTO_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    proto: proxyProto
    server: str
    port: int
    def __init__(self, proto: _Optional[_Union[proxyProto, str]] = ..., server: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class ProxyConfig(_message.Message):
    __slots__ = ("networkProxyEnable", "proxies", "exceptions", "pacfile", "networkProxyURL", "proxyCertPEM")
    NETWORKPROXYENABLE_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    PACFILE_FIELD_NUMBER: _ClassVar[int]
    NETWORKPROXYURL_FIELD_NUMBER: _ClassVar[int]
    PROXYCERTPEM_FIELD_NUMBER: _ClassVar[int]
    networkProxyEnable: bool
    proxies: _containers.RepeatedCompositeFieldContainer[ProxyServer]
    exceptions: str
    pacfile: str
    networkProxyURL: str
    proxyCertPEM: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, networkProxyEnable: _Optional[bool] = ..., proxies: _Optional[_Iterable[_Union[ProxyServer, _Mapping]]] = ..., exceptions: _Optional[str] = ..., pacfile: _Optional[str] = ..., networkProxyURL: _Optional[str] = ..., proxyCertPEM: _Optional[_Iterable[bytes]] = ...) -> None: ...
