from edgevol.api.eve.common import acipherinfo_pb2 as _acipherinfo_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DsType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DsUnknown: _ClassVar[DsType]
    DsHttp: _ClassVar[DsType]
    DsHttps: _ClassVar[DsType]
    DsS3: _ClassVar[DsType]
    DsSFTP: _ClassVar[DsType]
    DsContainerRegistry: _ClassVar[DsType]
    DsAzureBlob: _ClassVar[DsType]
    DsGoogleStorage: _ClassVar[DsType]
DsUnknown: DsType
DsHttp: DsType
DsHttps: DsType
DsS3: DsType
DsSFTP: DsType
DsContainerRegistry: DsType
DsAzureBlob: DsType
DsGoogleStorage: DsType

class DatastoreConfig(_message.Message):
    __slots__ = ("id", "dType", "fqdn", "apiKey", "password", "dpath", "region", "cipherData", "dsCertPEM")
    ID_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FQDN_FIELD_NUMBER: _ClassVar[int]
    APIKEY_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    DPATH_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CIPHERDATA_FIELD_NUMBER: _ClassVar[int]
    DSCERTPEM_FIELD_NUMBER: _ClassVar[int]
    id: str
    dType: DsType
    fqdn: str
    apiKey: str
    password: str
    dpath: str
    region: str
    cipherData: _acipherinfo_pb2.CipherBlock
    dsCertPEM: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, id: _Optional[str] = ..., dType: _Optional[_Union[DsType, str]] = ..., fqdn: _Optional[str] = ..., apiKey: _Optional[str] = ..., password: _Optional[str] = ..., dpath: _Optional[str] = ..., region: _Optional[str] = ..., cipherData: _Optional[_Union[_acipherinfo_pb2.CipherBlock, _Mapping]] = ..., dsCertPEM: _Optional[_Iterable[bytes]] = ...) -> None: ...
