#!/usr/bin/env bash
# Set up everything edgevol needs on a fresh Debian machine: system packages
# (only those missing) and a .venv with edgevol installed. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
# Volume exports: qemu-storage-daemon (NBD, vhost-user-blk) and virtiofsd (directory volumes).
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-common)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the registry token-auth tests sign with it
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)  # the download proxy tests run a real HTTP proxy
# The controller's tests start a throwaway PostgreSQL cluster with initdb/pg_ctl.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The SFTP datastore tests start their own OpenSSH server on loopback; Azurite (the Azure Blob tests) is an npm package.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The web console's tests drive Debian's chromium with Playwright (which never downloads a browser here).
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ "${1:-}" = "bench" ]; then  # `make bench` compares against these tools
    command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
    command -v umoci >/dev/null 2>&1 || need+=(umoci)
    [ -x /usr/bin/time ] || need+=(time)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need[*]} with apt-get" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.edgevol-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi

# From npm, pinned, installed beside the venv: uPlot draws the web console's charts (the controller serves it
# from here); Microsoft's Azure Storage server (Azurite) for the Azure Blob datastore tests.
npm_packages="uplot@1.6.32 azurite@3.37.0"
if [ "$(cat .tools/npm/.installed 2>/dev/null)" != "$npm_packages" ]; then
    npm install --silent --no-audit --no-fund --prefix .tools/npm $npm_packages >/dev/null
    echo "$npm_packages" > .tools/npm/.installed
fi
