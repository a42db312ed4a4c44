#!/usr/bin/env bash
# Regenerate the Python protobuf modules (*_pb2.py, *_pb2.pyi) from the
# .proto files under src/edgevol/api.
#
# The generated files are committed, so that installing edgevol needs no
# protoc. tests/test_api.py runs this script into a scratch directory and
# fails if the committed files differ: edit a .proto, then run this.
#
# Usage: scripts/gen_protos.sh [OUT_DIR]
#   OUT_DIR  write the generated tree there instead of updating src/ in place
#   PYTHON   interpreter with grpcio-tools (default: .venv/bin/python)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-.venv/bin/python}"
# protoc runs from src/, so a relative interpreter path must be made absolute.
case "$py" in
  /*) ;;
  */*) py="$root/$py" ;;
esac

mapfile -t protos < <(cd src && find edgevol/api -name '*.proto' | LC_ALL=C sort)
if [ "${#protos[@]}" -eq 0 ]; then
  echo "gen_protos: no .proto files under src/edgevol/api" >&2
  exit 1
fi

generate() {
  mkdir -p "$1"
  (cd src && "$py" -m grpc_tools.protoc -I. --python_out="$1" --pyi_out="$1" "${protos[@]}")
}

if [ $# -ge 1 ]; then
  out="$(mkdir -p "$1" && cd "$1" && pwd)"
  generate "$out"
  exit 0
fi

# In place: generate beside the tree first so a protoc error leaves the
# committed files untouched, then swap the generated files in.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
generate "$scratch"
find src/edgevol/api \( -name '*_pb2.py' -o -name '*_pb2.pyi' \) -delete
(cd "$scratch" && find . -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' \) -print0) |
  while IFS= read -r -d '' f; do
    install -m 0644 "$scratch/$f" "src/$f"
  done
echo "gen_protos: regenerated ${#protos[@]} proto files"
