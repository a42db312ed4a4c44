from edgevol.api.eve.common import evecommon_pb2 as _evecommon_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyExchangeScheme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEA_NONE: _ClassVar[KeyExchangeScheme]
    KEA_ECDH: _ClassVar[KeyExchangeScheme]

class EncryptionScheme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SA_NONE: _ClassVar[EncryptionScheme]
    SA_AES_256_CFB: _ClassVar[EncryptionScheme]
KEA_NONE: KeyExchangeScheme
KEA_ECDH: KeyExchangeScheme
SA_NONE: EncryptionScheme
SA_AES_256_CFB: EncryptionScheme

class CipherContext(_message.Message):
    __slots__ = ("contextId", "hashScheme", "keyExchangeScheme", "encryptionScheme", "deviceCertHash", "controllerCertHash")
    CONTEXTID_FIELD_NUMBER: _ClassVar[int]
    HASHSCHEME_FIELD_NUMBER: _ClassVar[int]
    KEYEXCHANGESCHEME_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTIONSCHEME_FIELD_NUMBER: _ClassVar[int]
    DEVICECERTHASH_FIELD_NUMBER: _ClassVar[int]
    CONTROLLERCERTHASH_FIELD_NUMBER: _ClassVar[int]
    contextId: str
    hashScheme: _evecommon_pb2.HashAlgorithm
    keyExchangeScheme: KeyExchangeScheme
    encryptionScheme: EncryptionScheme
    deviceCertHash: bytes
    controllerCertHash: bytes
    def __init__(self, contextId: _Optional[str] = ..., hashScheme: _Optional[_Union[_evecommon_pb2.HashAlgorithm, str]] = ..., keyExchangeScheme: _Optional[_Union[KeyExchangeScheme, str]] = ..., encryptionScheme: _Optional[_Union[EncryptionScheme, str]] = ..., deviceCertHash: _Optional[bytes] = ..., controllerCertHash: _Optional[bytes] = ...) -> None: ...

class CipherBlock(_message.Message):
    __slots__ = ("cipherContextId", "initialValue", "cipherData", "clearTextSha256")
    CIPHERCONTEXTID_FIELD_NUMBER: _ClassVar[int]
    INITIALVALUE_FIELD_NUMBER: _ClassVar[int]
    CIPHERDATA_FIELD_NUMBER: _ClassVar[int]
    CLEARTEXTSHA256_FIELD_NUMBER: _ClassVar[int]
    cipherContextId: str
    initialValue: bytes
    cipherData: bytes
    clearTextSha256: bytes
    def __init__(self, cipherContextId: _Optional[str] = ..., initialValue: _Optional[bytes] = ..., cipherData: _Optional[bytes] = ..., clearTextSha256: _Optional[bytes] = ...) -> None: ...

class EncryptionBlock(_message.Message):
    __slots__ = ("dsAPIKey", "dsPassword")
    DSAPIKEY_FIELD_NUMBER: _ClassVar[int]
    DSPASSWORD_FIELD_NUMBER: _ClassVar[int]
    dsAPIKey: str
    dsPassword: str
    def __init__(self, dsAPIKey: _Optional[str] = ..., dsPassword: _Optional[str] = ...) -> None: ...
