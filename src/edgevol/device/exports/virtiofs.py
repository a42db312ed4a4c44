"""Directory volumes through virtiofsd (QEMU 7.2's C daemon), EVE's VAP_9P done the modern way.

Options that work here (root, in a container): ``--socket-path`` (relative:
the daemon runs in the exports dir), ``-o source=DIR``, ``-o sandbox=namespace``
(the default; its mount/pid/net namespaces and pivot_root are set up when a
client connects, which was checked with a bare socket connection:
``-o sandbox=chroot`` also works here and is the fallback for hosts without
namespaces), ``-o cache=auto``.

Read-only: this virtiofsd has no read-only option. It is started through
``unshare --mount`` with the directory bind-mounted read-only onto itself in
that private mount namespace, so every write the daemon attempts gets EROFS
while the host (and the agent) still see the directory writable.

Counters: virtiofsd exposes no I/O counters (no monitor, no stats), so an
export of a directory reports ``counters=None``.

virtiofsd serves one vhost-user session and exits with status 0 when its
client disconnects (a VM stopped); that is not a crash: it is restarted at
once, without backoff or a restart count.
"""

from __future__ import annotations

import shlex

from .spec import ExportSpec

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
SANDBOX = "namespace"


def socket_names(stem: str) -> dict[str, str]:
    return {"virtiofs": f"{stem}.virtiofs.sock"}


def argv(spec: ExportSpec, sockets: dict[str, str], sandbox: str = SANDBOX) -> list[str]:
    source = str(spec.path.resolve())
    daemon = [VIRTIOFSD, f"--socket-path={sockets['virtiofs']}", "-o", f"source={source}",
              "-o", f"sandbox={sandbox}", "-o", "cache=auto"]
    if not spec.readonly:
        return daemon
    d = shlex.quote(source)
    script = f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && exec " + shlex.join(daemon)
    # one process throughout (unshare and sh exec), so the pid and the parent-death signal are the daemon's
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
