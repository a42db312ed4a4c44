from edgevol.api.eve.common import acipherinfo_pb2 as _acipherinfo_pb2
from edgevol.api.eve.common import evecommon_pb2 as _evecommon_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthBody(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class AuthContainer(_message.Message):
    __slots__ = ("protectedPayload", "algo", "senderCertHash", "signatureHash", "senderCert", "cipherContext", "cipherData")
    PROTECTEDPAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ALGO_FIELD_NUMBER: _ClassVar[int]
    SENDERCERTHASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATUREHASH_FIELD_NUMBER: _ClassVar[int]
    SENDERCERT_FIELD_NUMBER: _ClassVar[int]
    CIPHERCONTEXT_FIELD_NUMBER: _ClassVar[int]
    CIPHERDATA_FIELD_NUMBER: _ClassVar[int]
    protectedPayload: AuthBody
    algo: _evecommon_pb2.HashAlgorithm
    senderCertHash: bytes
    signatureHash: bytes
    senderCert: bytes
    cipherContext: _acipherinfo_pb2.CipherContext
    cipherData: _acipherinfo_pb2.CipherBlock
    def __init__(self, protectedPayload: _Optional[_Union[AuthBody, _Mapping]] = ..., algo: _Optional[_Union[_evecommon_pb2.HashAlgorithm, str]] = ..., senderCertHash: _Optional[bytes] = ..., signatureHash: _Optional[bytes] = ..., senderCert: _Optional[bytes] = ..., cipherContext: _Optional[_Union[_acipherinfo_pb2.CipherContext, _Mapping]] = ..., cipherData: _Optional[_Union[_acipherinfo_pb2.CipherBlock, _Mapping]] = ...) -> None: ...
