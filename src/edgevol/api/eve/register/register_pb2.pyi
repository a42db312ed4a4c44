from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ZRegisterMsg(_message.Message):
    __slots__ = ("onBoardKey", "pemCert", "serial", "softSerial")
    ONBOARDKEY_FIELD_NUMBER: _ClassVar[int]
    PEMCERT_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SOFTSERIAL_FIELD_NUMBER: _ClassVar[int]
    onBoardKey: str
    pemCert: bytes
    serial: str
    softSerial: str
    def __init__(self, onBoardKey: _Optional[str] = ..., pemCert: _Optional[bytes] = ..., serial: _Optional[str] = ..., softSerial: _Optional[str] = ...) -> None: ...
