"""Generated protobuf modules for edgevol's description of the EVE API.

The ``.proto`` sources sit beside the generated ``*_pb2`` modules; regenerate
with ``scripts/gen_protos.sh`` after editing them.
"""
