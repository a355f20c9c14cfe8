"""Who may sit on the other end of the workers' socket: only this process's own user.

Two checks, both sides. The socket folder (`--socket-dir`, or `rscore serve`'s temp
folder) is made 0700, and an existing one that another user owns, or that group or
others may write, is refused at start-up: there another user could bind the socket
first and have our workers serve it. Then each connection is checked with
`SO_PEERCRED`: the sidecar refuses a worker of another uid, and a worker refuses a
listener of another uid (what catches a folder swapped after the start-up check).

The decisions (`socket_dir_problem`, `peer_problem`) are pure; `ensure_socket_dir` and
`peer_credentials` read the system. Never trusts a path's name or a hello's claims in
place of the kernel's answer, and never relaxes a folder's mode or owner itself.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from rscore.r_scorer.errors import ConfigurationError

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class PeerCredentials:
    """The kernel's word on the process at the other end of a unix socket: for a
    connecting worker, the worker; for a listener, whoever called listen()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """`SO_PEERCRED` of a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def peer_problem(peer: PeerCredentials, our_uid: int, *, peer_role: str) -> str | None:
    """Why the `peer_role` ("worker", "sidecar") at the other end must be refused, or
    None. Only our own uid is trusted: not even root, which no pod runs as."""
    if peer.uid == our_uid:
        return None
    return (
        f"the {peer_role} at the other end of the workers' socket runs as uid {peer.uid} "
        f"(pid {peer.pid}), not as this process's uid {our_uid}: refused. Another user "
        f"reached the socket; keep --socket-dir a folder of your own (mode 0700)"
    )


def socket_dir_problem(
    path: Path, *, is_dir: bool, owner_uid: int, mode: int, our_uid: int
) -> str | None:
    """Why `path` is no safe folder for the workers' socket, or None if it is."""
    if not is_dir:
        return f"the socket folder {path} is not a directory; point --socket-dir at a folder"
    if owner_uid != our_uid:
        return (
            f"the socket folder {path} belongs to uid {owner_uid}, not to this process's uid "
            f"{our_uid}: another user could bind the workers' socket there first. Point "
            f"--socket-dir at a folder of your own (one that does not exist yet is made "
            f"with mode 0700), or `chown {our_uid} {path}`"
        )
    writable_by = [who for who, bit in (("group", 0o020), ("others", 0o002)) if mode & bit]
    if writable_by:
        return (
            f"the socket folder {path} is writable by {' and '.join(writable_by)} (mode "
            f"{stat.S_IMODE(mode):04o}): another user could bind the workers' socket there "
            f"first. `chmod go-w {path}`, or point --socket-dir at a folder of your own (in "
            f"a pod: a subfolder of the shared emptyDir, which kubelet makes world-writable)"
        )
    return None


def ensure_socket_dir(path: Path) -> None:
    """Make `path` (mode 0700) unless it exists, then refuse it unless it is safe.
    Raises ConfigurationError naming the folder and the fix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # ours, or someone else's: the check below tells
    except OSError as exc:
        raise ConfigurationError(
            f"cannot make the socket folder {path}: {exc.strerror}; point --socket-dir at "
            f"a folder this user may create"
        ) from None
    else:
        os.chmod(path, 0o700)  # whatever the umask took away or left
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the socket folder {path}: {exc.strerror}") from None
    problem = socket_dir_problem(
        path,
        is_dir=stat.S_ISDIR(info.st_mode),
        owner_uid=info.st_uid,
        mode=info.st_mode,
        our_uid=os.geteuid(),
    )
    if problem is not None:
        raise ConfigurationError(problem)
