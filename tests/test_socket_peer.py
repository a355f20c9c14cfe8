"""The workers' socket admits only this process's own user, on both sides.

Tables for the pure decisions (the socket folder's owner and mode, a peer's uid from
SO_PEERCRED); the folder check on real folders and through the real CLI; then another
user for real (this suite runs as root, so `setpriv` gives a subprocess uid 65534): a
process of that user that connects to the sidecar's socket is refused before its hello
counts, and a real R worker refuses to serve a socket that user is listening on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rscore.r_scorer import protocol
from rscore.r_scorer.errors import ConfigurationError
from rscore.r_scorer.peer import (
    PeerCredentials,
    ensure_socket_dir,
    peer_credentials,
    peer_problem,
    socket_dir_problem,
)
from rscore.r_scorer.pool import SOCKET_NAME, WorkerPool

OTHER_UID = 65534  # nobody
ME = os.geteuid()
needs_root = pytest.mark.skipif(
    ME != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv for a 2nd uid"
)
DIR = stat.S_IFDIR


@pytest.mark.parametrize(
    ("is_dir", "owner", "mode", "complaint"),
    [
        (True, ME, DIR | 0o700, None),
        (True, ME, DIR | 0o755, None),  # others may read and enter: not bind
        (True, ME, DIR | 0o2700, None),  # setgid (an emptyDir with fsGroup): fine
        (True, ME, DIR | 0o770, "writable by group (mode 0770)"),
        (True, ME, DIR | 0o777, "writable by group and others (mode 0777)"),
        (True, ME, DIR | 0o1777, "writable by group and others (mode 1777)"),  # like /tmp
        (True, ME, DIR | 0o2777, "writable by group and others"),  # a bare emptyDir
        (True, ME + 1, DIR | 0o700, f"belongs to uid {ME + 1}, not to this process's uid"),
        (False, ME, stat.S_IFREG | 0o600, "is not a directory"),
    ],
)
def test_which_socket_folders_are_refused(
    is_dir: bool, owner: int, mode: int, complaint: str | None
) -> None:
    problem = socket_dir_problem(
        Path("/run/x"), is_dir=is_dir, owner_uid=owner, mode=mode, our_uid=ME
    )
    if complaint is None:
        assert problem is None
    else:
        assert problem is not None
        assert complaint in problem
        assert "/run/x" in problem  # names the folder


def test_so_peercred_names_the_process_at_the_other_end() -> None:
    one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with one, other:
        peer = peer_credentials(one)
    assert peer == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


@pytest.mark.parametrize(
    ("peer_uid", "refused"),
    [(ME, False), (ME + 1, True), (OTHER_UID, ME != OTHER_UID), (0, ME != 0)],
)
def test_only_our_own_uid_is_trusted(peer_uid: int, refused: bool) -> None:
    problem = peer_problem(PeerCredentials(123, peer_uid, 5), ME, peer_role="worker")
    assert (problem is not None) == refused
    if refused:
        assert problem is not None
        assert f"the worker at the other end of the workers' socket runs as uid {peer_uid}" in (
            problem
        )
        assert "pid 123" in problem


# --- the folder, for real ------------------------------------------------------------


def test_a_missing_folder_is_made_0700_whatever_the_umask(tmp_path: Path) -> None:
    for umask in (0o000, 0o022, 0o077):
        folder = tmp_path / f"umask-{umask:o}" / "run"
        old = os.umask(umask)
        try:
            ensure_socket_dir(folder)
        finally:
            os.umask(old)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    ensure_socket_dir(folder)  # ours already: accepted as is


def test_a_folder_others_may_write_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(ConfigurationError, match=r"writable by group and others") as caught:
        ensure_socket_dir(folder)
    assert f"chmod go-w {folder}" in caught.value.message
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777  # never "fixed" behind our back


@needs_root
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigurationError, match=f"belongs to uid {OTHER_UID}"):
        ensure_socket_dir(folder)


async def test_the_pool_will_not_listen_in_a_folder_others_may_write(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    pool = WorkerPool(folder / SOCKET_NAME)
    with pytest.raises(ConfigurationError, match="writable by group and others"):
        await pool.start()
    assert not (folder / SOCKET_NAME).exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rscore.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["sidecar", "scorer"])
@pytest.mark.real_r
@pytest.mark.e2e
def test_both_containers_refuse_an_unsafe_socket_dir_at_start_up(
    command: str, tmp_path: Path, example_bundles: Path
) -> None:
    """`rscore sidecar` and `rscore scorer` (either may start first) stop at once with a
    JSON error naming the folder; the scorer before it loads R."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    args = ["--socket-dir", str(folder)]
    if command == "sidecar":
        args += ["--auth", "none", "--port", "0", "--metrics-port", "0"]
    else:
        args = [str(example_bundles / "mtcars-lm"), *args, "--workers", "1"]
    done = run_cli(command, *args)
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "configuration_error"
    assert f"the socket folder {folder} is writable by group and others" in error["message"]
    assert not (folder / SOCKET_NAME).exists()


# --- another user, for real ----------------------------------------------------------


@contextlib.contextmanager
def folder_for_both() -> Iterator[Path]:
    """A folder under /tmp that uid 65534 may enter (tmp_path's parents are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="rscore-peer-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_user(uid: int, *command: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]


# Connects, says hello, and reports whether the other end hung up (and how much it sent).
_FAKE_WORKER = """
import socket, sys
hello = sys.stdin.buffer.read()
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(sys.argv[1])
try:
    connection.sendall(hello)
    answer = connection.recv(1)
except (BrokenPipeError, ConnectionResetError):
    answer = b""
print("hung up" if answer == b"" else "answered", flush=True)
"""


def fake_hello() -> bytes:
    model = {"name": "impostor", "version": "1", "batchable": True, "packages": []}
    return protocol.encode(protocol.hello(0, 4242, 1, model, of=1))


@needs_root
async def test_the_sidecar_refuses_a_worker_of_another_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The socket is made 0666 here (the folder check and the socket's mode bypassed):
    SO_PEERCRED still keeps uid 65534 out, and its hello never counts. The same client
    as our own user is taken: the check is on the uid, not on the client."""
    caplog.set_level(logging.INFO, logger="rscore.pool")
    with folder_for_both() as folder:
        pool = WorkerPool(folder / SOCKET_NAME)
        await pool.start()
        try:
            pool.socket_path.chmod(0o666)
            script = as_user(OTHER_UID, sys.executable, "-I", "-c", _FAKE_WORKER)
            process = await asyncio.create_subprocess_exec(
                *script, str(pool.socket_path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(process.communicate(fake_hello()), 30)
            assert out.decode().strip() == "hung up"
            assert pool.refused_peers == 1
            assert pool.model is None  # its hello was never read
            assert pool.workers == []
            assert pool.worker_seen_at is None
            assert f"runs as uid {OTHER_UID}" in caplog.text
            assert "refused a connection on" in caplog.text

            ours = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-c", _FAKE_WORKER, str(pool.socket_path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert ours.stdin is not None
            ours.stdin.write(fake_hello())
            ours.stdin.close()
            await asyncio.wait_for(pool.wait_for_workers(1), 30)
            assert pool.model is not None
            assert pool.model.name == "impostor"
            assert pool.refused_peers == 1
            ours.kill()
            await ours.wait()
        finally:
            await pool.close()


# A listener of another user: accepts, and reports how many bytes each connection sent.
_FOREIGN_LISTENER = """
import os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
listener.listen()
print("listening", flush=True)
while True:
    connection, _ = listener.accept()
    connection.settimeout(0.5)
    try:
        got = connection.recv(65536)
    except TimeoutError:
        got = b""
    connection.close()
    print(f"connection sent {len(got)} bytes", flush=True)
"""


@needs_root
@pytest.mark.real_r
async def test_a_worker_refuses_to_serve_a_socket_of_another_user(tmp_path: Path) -> None:
    """Another user bound the socket first (the shared-folder attack): the real worker
    connects, sees the listener's uid with SO_PEERCRED, and sends nothing, not even its
    hello (which would tell the model), logging why."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "score.R").write_text(
        "init <- function(model_dir) list()\nscore <- function(state, data) data$x\n"
    )
    with folder_for_both() as folder:
        theirs = folder / "theirs"
        theirs.mkdir()
        os.chown(theirs, OTHER_UID, OTHER_UID)
        path = theirs / SOCKET_NAME
        listener = await asyncio.create_subprocess_exec(
            *as_user(OTHER_UID, sys.executable, "-I", "-c", _FOREIGN_LISTENER), str(path),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        worker = None
        try:
            assert listener.stdout is not None
            line = await asyncio.wait_for(listener.stdout.readline(), 30)
            assert line == b"listening\n"
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rscore.r_scorer.worker",
                "--bundle", str(bundle), "--socket", str(path),
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            refusal = await asyncio.wait_for(_log_line(worker, "not serving the socket"), 60)
            message = refusal["message"]
            assert "the sidecar at the other end of the workers' socket" in message
            assert f"runs as uid {OTHER_UID}" in message
            assert str(path) in message
            reports = [await asyncio.wait_for(listener.stdout.readline(), 10) for _ in range(2)]
            assert reports == [b"connection sent 0 bytes\n"] * 2  # it tries again, silently
        finally:
            for process in (worker, listener):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()


async def _log_line(process: asyncio.subprocess.Process, text: str) -> dict:
    """The first JSON log line on the process's stderr whose message holds `text`."""
    assert process.stderr is not None
    while line := await process.stderr.readline():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if text in record.get("message", ""):
                return record
    raise AssertionError(f"the process ended without logging {text!r}")
