from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class HashAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HASH_ALGORITHM_INVALID: _ClassVar[HashAlgorithm]
    HASH_ALGORITHM_SHA256_16BYTES: _ClassVar[HashAlgorithm]
    HASH_ALGORITHM_SHA256_32BYTES: _ClassVar[HashAlgorithm]
HASH_ALGORITHM_INVALID: HashAlgorithm
HASH_ALGORITHM_SHA256_16BYTES: HashAlgorithm
HASH_ALGORITHM_SHA256_32BYTES: HashAlgorithm
