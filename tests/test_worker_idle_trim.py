"""An R worker hands the heap memory its requests freed back to the system once idle
(`rscore.r_scorer.worker.IDLE_TRIM_S`), never while requests are waiting.

The worker's own request loop (`worker._serve`) over a real socket pair, scoring with a
real model in this process's R; glibc's malloc_trim is replaced by a recorder that
notes how many answers the worker had sent when it ran.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from rscore.r_scorer import protocol, worker
from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.prototype import TypedColumn, TypedFrame
from rscore.r_scorer.rmodel import load_model

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

WAIT_S = 30.0  # bound of every wait: only a failing test waits this long


class Counting:
    """The worker's end of the socket, counting the answers it has sent."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.sent = 0

    def sendall(self, data: bytes) -> None:
        self.connection.sendall(data)
        self.sent += 1

    def recv_into(self, buffer: memoryview) -> int:
        return self.connection.recv_into(buffer)

    def fileno(self) -> int:
        return self.connection.fileno()


def _read_answer(connection: socket.socket) -> dict:
    length = protocol.frame_length(worker._receive(connection, protocol.HEADER.size))
    return protocol.decode(worker._receive(connection, length))


def test_an_idle_worker_trims_once_and_a_busy_one_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "score.R").write_text(
        "init <- function(model_dir) list()\nscore <- function(state, data) data$x * 2\n"
    )
    model = load_model(read_bundle(tmp_path))
    answered: list[int] = []
    trims: list[int] = []  # how many answers the worker had sent when each trim ran
    trimmed = threading.Event()

    def record_trim() -> None:
        trims.append(worker_end.sent)
        trimmed.set()

    monkeypatch.setattr(worker, "malloc_trim", lambda: record_trim)
    monkeypatch.setattr(worker, "IDLE_TRIM_S", 0.05)
    ours, theirs = socket.socketpair()
    worker_end = Counting(theirs)
    frame = TypedFrame((TypedColumn("x", "numeric", [1.0]),), 1)

    # Three requests queued before the worker reads the first: it is never idle between
    # them (nor before the first).
    ours.sendall(b"".join(protocol.encode(protocol.score_request(i, frame)) for i in range(3)))

    def sidecar() -> None:
        try:
            for _ in range(3):
                answered.append(_read_answer(ours)["id"])
            assert trimmed.wait(WAIT_S)  # idle now
            ours.sendall(protocol.encode(protocol.score_request(3, frame)))
            answered.append(_read_answer(ours)["id"])
            trimmed.clear()
            assert trimmed.wait(WAIT_S)  # idle again after the fourth
        finally:
            ours.close()  # the worker's loop ends with PeerGone

    thread = threading.Thread(target=sidecar)
    thread.start()
    with pytest.raises(worker.PeerGone):
        worker._serve(worker_end, model, served=0, max_requests=0)  # type: ignore[arg-type]
    thread.join(WAIT_S)
    theirs.close()
    assert answered == [0, 1, 2, 3]
    # Once after the three (none between them), once after the fourth; never twice in
    # a row for one idle spell.
    assert trims == [3, 4]
