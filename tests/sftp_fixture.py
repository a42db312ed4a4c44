"""A real SFTP server for tests: OpenSSH's sshd on loopback, with its own config, host key and user.

Password authentication needs a system account, so the fixture (as root, which CI is) creates a
locked-down one. It has no home and no shell, and it may log in only to this sshd (AllowUsers), only for
internal-sftp, chrooted to a root-owned directory. The fixture removes the account afterwards if it
created it; each server has its own account, so test files running servers at once on parallel workers
never change or remove each other's. sshd refuses a chroot with any component that is not root-owned or is
group/other-writable, so /tmp (mode 1777), where pytest's temporary directories live, cannot hold it. The chroot goes under
/run instead (or another root-only directory).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.datastore_cases import stop_process, wait_until_ready

SSHD = "/usr/sbin/sshd"
USER_PREFIX = "edgevol-sftp-"  # each server its own account (parallel test workers run their own servers)
NOLOGIN = "/usr/sbin/nologin"
_CHROOT_PARENTS = ("/run", "/var/lib", "/srv")


@dataclass
class RunningSftp:
    process: subprocess.Popen[bytes]
    port: int
    user: str
    password: str
    root: Path  # the chroot: "/" for the SFTP user
    log: Path

    @property
    def fqdn(self) -> str:
        return f"127.0.0.1:{self.port}"

    def put(self, path: str, data: bytes | Path, mode: int = 0o644) -> Path:
        """Place a file at ``path`` inside the chroot (root-owned, parents 0755)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, target)
        else:
            target.write_bytes(data)
        target.chmod(mode)
        return target

    def stop(self) -> None:
        stop_process(self.process, grace=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chroot_safe(path: Path) -> bool:
    """sshd's rule for ChrootDirectory: every component root-owned and not group- or other-writable."""
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _make_chroot() -> Path:
    for parent in map(Path, _CHROOT_PARENTS):
        if parent.is_dir() and _chroot_safe(parent):
            root = Path(tempfile.mkdtemp(prefix="edgevol-sftp-test-", dir=parent))
            root.chmod(0o755)
            return root
    pytest.fail(f"no root-owned, non-writable directory for sshd's ChrootDirectory among {_CHROOT_PARENTS}")


def _ensure_user(user: str, password: str) -> bool:
    """The test account ``user`` with ``password``; True when this call created it."""
    try:
        existing = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", NOLOGIN, "--comment", "edgevol SFTP tests (temporary)", user],
                       check=True, capture_output=True)
        created = True
    else:
        if existing.pw_shell != NOLOGIN:
            pytest.fail(f"user {user} exists with shell {existing.pw_shell}; it is not this fixture's, refusing "
                        "to change its password")
        created = False  # left over from an interrupted run: reuse it, lock it again afterwards
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n".encode(), check=True, capture_output=True)
    return created


def _remove_user(user: str, created: bool) -> None:
    if not created:
        subprocess.run(["usermod", "--lock", user], capture_output=True)
        return
    deadline = time.monotonic() + 10
    while subprocess.run(["userdel", user], capture_output=True).returncode not in (0, 6):  # 6: no such user
        if time.monotonic() > deadline:  # a session process outlived its connection: remove the account anyway
            subprocess.run(["userdel", "--force", user], capture_output=True)
            return
        time.sleep(0.2)


def _config(workdir: Path, port: int, root: Path, user: str) -> Path:
    host_key = workdir / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgevol-sftp-test", "-f", str(host_key)],
                   check=True, capture_output=True)
    config = workdir / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {workdir / "sshd.pid"}
AllowUsers {user}
PermitRootLogin no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication no
AuthorizedKeysFile none
UsePAM no
LogLevel VERBOSE
MaxStartups 100
Subsystem sftp internal-sftp
Match User {user}
    ForceCommand internal-sftp
    ChrootDirectory {root}
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTTY no
""")
    return config


def _answers_ssh(port: int) -> bool:
    """sshd is up: it answers with its banner."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        return s.recv(64).startswith(b"SSH-2.0-")


def start_sftp(workdir: Path) -> tuple[RunningSftp, bool]:
    """sshd serving SFTP to a fresh password; returns it and whether the user was created here."""
    if os.geteuid() != 0:
        pytest.skip("the SFTP tests need root: they create a system user for sshd's password login and a "
                    "root-owned chroot (CI runs as root)")
    if not os.access(SSHD, os.X_OK):
        pytest.fail("OpenSSH's sshd is missing: `make test` installs it (Debian openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    password = secrets.token_urlsafe(18)
    root = _make_chroot()
    user = USER_PREFIX + secrets.token_hex(4)
    created = _ensure_user(user, password)
    try:
        port = _free_port()
        config = _config(workdir, port, root, user)
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd refuses its test config: {check.stderr}")
        log = workdir / "sshd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
        wait_until_ready(proc, lambda: _answers_ssh(port), what="sshd", log=log, timeout=20, not_yet=(OSError,))
        return RunningSftp(proc, port, user, password, root, log), created
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        _remove_user(user, created)
        raise


@pytest.fixture(scope="module")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSftp]:
    server, created = start_sftp(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        _remove_user(server.user, created)
