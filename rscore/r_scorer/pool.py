"""The sidecar's side of the worker protocol: a socket the R workers connect to.

`WorkerPool` listens on the Unix socket, greets each worker that connects, and keeps
one `WorkerLink` per live worker. A link carries at most one request at a time; if its
worker dies mid-request, that request fails with `WorkerCrashed` and the link is gone
(the restarted worker connects as a new link). `acquire()` lends idle links to simple
callers; the sidecar's admission and queue are `rscore.sidecar.admission`.

The socket's folder is made private (0700) and refused if it is not (`rscore.r_scorer.peer`),
and a connection from a process of another user (SO_PEERCRED) is refused before it may
say hello. The pool remembers when a worker was last connected, for `/healthz`.

Asyncio only; never imports rpy2 and never starts R.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rscore.r_scorer import protocol
from rscore.r_scorer.errors import ProtocolError, WorkerCrashed, error_from_json
from rscore.r_scorer.peer import ensure_socket_dir, peer_credentials, peer_problem
from rscore.r_scorer.prototype import Prototype, TypedFrame

log = logging.getLogger("rscore.pool")

SOCKET_NAME = "workers.sock"  # inside the --socket-dir shared by the pod's two containers


@dataclass(frozen=True)
class ModelInfo:
    """What the workers say about the model in their hello."""

    name: str
    version: str
    batchable: bool
    packages: tuple[str, ...]
    prototype: Prototype
    # May a large request be cut into chunks over idle workers (rscore.sidecar.fanout)? A
    # worker that does not say is never split.
    splittable: bool = False

    @classmethod
    def from_hello(cls, model: dict[str, Any]) -> ModelInfo:
        return cls(
            name=str(model["name"]),
            version=str(model.get("version", "")),
            batchable=bool(model.get("batchable", True)),
            packages=tuple(model.get("packages", ())),
            prototype=Prototype.from_json(model.get("prototype", {})),
            splittable=bool(model.get("splittable", False)),
        )


@dataclass(frozen=True)
class ScoreReply:
    predictions: protocol.Predictions  # a long answer as its JSON text (JsonArray)
    r_seconds: float


class WorkerLink:
    """The connection to one R worker process."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        slot: int,
        of: int,
        pid: int,
        generation: int,
        model: ModelInfo,
    ) -> None:
        self.slot = slot
        self.of = of
        self.pid = pid
        self.generation = generation
        self.model = model
        self.retiring = False  # the worker said its last answer was its last
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: asyncio.Future[dict[str, Any]] | None = None
        self._pending_id = 0
        self._on_answer: Callable[[asyncio.Future[dict[str, Any]]], None] | None = None
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def alive(self) -> bool:
        return not self._closed.done()

    @property
    def usable(self) -> bool:
        return self.alive and not self.retiring

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def __repr__(self) -> str:
        return f"<WorkerLink slot={self.slot} pid={self.pid} gen={self.generation}>"

    async def score(self, frame: TypedFrame, timeout_s: float | None = None) -> ScoreReply:
        """Score one (possibly merged) frame on this worker.

        Raises the worker's ScoringError (model_error, schema_mismatch...), or
        WorkerCrashed if the worker dies first. Cancelling the caller (e.g. on timeout)
        leaves the link busy until the worker answers or dies, so no second request
        ever overlaps a first.
        """
        return self.reply_of(await asyncio.shield(self.send(frame, timeout_s)))

    def send(
        self,
        frame: TypedFrame,
        timeout_s: float | None = None,
        on_answer: Callable[[asyncio.Future[dict[str, Any]]], None] | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Write one score request now, without awaiting anything; the future is the
        worker's raw answer (`reply_of()` reads it), or WorkerCrashed if it dies first.

        `on_answer(future)` is called once the future is resolved, synchronously, by the
        link's reader: a done callback would cost the sidecar one more event-loop
        iteration per request. Never cancel the future: the link stays busy until the
        worker answers or dies, whatever its caller does.
        """
        if self._pending is not None:
            raise RuntimeError(f"{self!r} already has a request in flight")
        if not self.usable:
            # The pid is for logs, not for clients: the message reaches the 502's body.
            log.warning(
                "R worker slot %d pid %d is gone; a request was refused", self.slot, self.pid
            )
            raise WorkerCrashed("the R worker is gone; it is being restarted")
        request_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending, self._pending_id, self._on_answer = reply, request_id, on_answer
        self._writer.write(protocol.encode(protocol.score_request(request_id, frame, timeout_s)))
        return reply

    @staticmethod
    def reply_of(answer: dict[str, Any]) -> ScoreReply:
        """A worker's answer as a ScoreReply, or its error raised."""
        if answer.get("ok"):
            return ScoreReply(answer["predictions"], float(answer.get("r_seconds", 0.0)))
        error = answer.get("error", {})
        raise error_from_json(str(error.get("code")), str(error.get("message")))

    def when_answered(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the request in flight is answered or the worker dies."""
        if self._pending is None:
            callback()
        else:
            self._pending.add_done_callback(lambda _: callback())

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def read_answers(self) -> None:
        """Resolve each request's future from the worker's answers until it goes away."""
        try:
            while True:
                header = await self._reader.readexactly(protocol.HEADER.size)
                body = await self._reader.readexactly(protocol.frame_length(header))
                answer = protocol.decode(body)
                if self._pending is None:
                    raise ProtocolError("answer with no request in flight")
                if answer.get("id") != self._pending_id:
                    raise ProtocolError(
                        f"answered request {answer.get('id')!r} instead of {self._pending_id}"
                    )
                if answer.get("last"):
                    self.retiring = True  # before the answer is handed on: send no more
                self._resolve(answer)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._fail(exc)
        except ProtocolError as exc:
            log.error("%r broke the protocol: %s", self, exc)
            self._fail(exc)
        finally:
            self._writer.close()

    def _resolve(self, outcome: dict[str, Any] | WorkerCrashed) -> None:
        """Settle the request in flight (if any) and tell its `on_answer`."""
        pending, on_answer = self._pending, self._on_answer
        self._pending = self._on_answer = None
        if pending is None:
            return
        if not pending.done():
            if isinstance(outcome, WorkerCrashed):
                pending.set_exception(outcome)
                pending.exception()  # mark retrieved: the caller may have timed out already
            else:
                pending.set_result(outcome)
        if on_answer is not None:
            try:
                on_answer(pending)
            except Exception:  # the caller's bug must not stop this link's reader
                log.exception("%r: the answer's callback failed", self)

    def _fail(self, cause: BaseException) -> None:
        # Closed first: whoever is told of the crash must already see the link unusable.
        if not self._closed.done():
            self._closed.set_result(cause)
        why = "broke the worker protocol" if isinstance(cause, ProtocolError) else "died"
        if self._pending is not None:  # the pid goes to the log only, never to the client
            log.warning(
                "R worker slot %d pid %d %s while scoring a request", self.slot, self.pid, why
            )
        self._resolve(
            WorkerCrashed(f"the R worker {why} while scoring this request; it is being restarted")
        )

    def close(self) -> None:
        self._writer.close()


class WorkerPool:
    """Listens for R workers and hands out idle ones."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        on_worker_up: Callable[[WorkerLink], None] | None = None,
        on_worker_down: Callable[[WorkerLink, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.clock = clock
        self.refused_peers = 0  # connections from another user's processes
        self._worker_seen_at: float | None = None
        self.model: ModelInfo | None = None
        self.expected_workers = 0  # as many as the supervisor says it runs
        self._links: dict[int, WorkerLink] = {}
        self._lent: set[WorkerLink] = set()  # handed out by acquire() and not yet back
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._changed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self.on_worker_up = on_worker_up
        self.on_worker_down = on_worker_down

    @property
    def all_connected(self) -> bool:
        """Every worker the supervisor runs has connected (and none is retiring)."""
        return self.expected_workers > 0 and len(self.workers) >= self.expected_workers

    @property
    def workers(self) -> list[WorkerLink]:
        """Live, usable worker links, by slot."""
        return [link for _, link in sorted(self._links.items()) if link.usable]

    @property
    def worker_seen_at(self) -> float | None:
        """The last moment (`clock`) a worker was connected: now while one is; None
        before the first."""
        return self.clock() if self._links else self._worker_seen_at

    async def start(self) -> None:
        """Listen. Raises ConfigurationError if the socket's folder is not private."""
        ensure_socket_dir(self.socket_path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a previous run
        self._server = await asyncio.start_unix_server(self._greet, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        """Stop listening and hang up on every worker (they reconnect to the next pool).
        Closing twice is harmless."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        # Each connection's task ends by itself once its socket is closed.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def wait_for_workers(self, count: int) -> None:
        """Wait until at least `count` workers are connected."""
        while len(self.workers) < count:
            self._changed.clear()
            await self._changed.wait()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[WorkerLink]:
        """An idle worker for one request, for simple callers (tests, benchmarks); the
        sidecar's admission is `rscore.sidecar.admission.Dispatcher`. Kept no list of idle
        links of its own: it looks at the live ones, so a gone worker leaves nothing."""
        link = await self._idle_link()
        try:
            yield link
        finally:
            # A caller that gave up (timeout) while R still works frees it once answered.
            link.when_answered(lambda: self._give_back(link))

    async def _idle_link(self) -> WorkerLink:
        while True:
            for link in self.workers:
                if not link.busy and link not in self._lent:
                    self._lent.add(link)
                    return link
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _give_back(self, link: WorkerLink) -> None:
        self._lent.discard(link)
        self._wake_a_waiter()

    def _wake_a_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        try:
            if self._trusted(writer):
                await self._serve_worker(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    def _trusted(self, writer: asyncio.StreamWriter) -> bool:
        """Whether the connecting process runs as our user (the kernel's SO_PEERCRED)."""
        problem: str | None
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except OSError as exc:
            problem = f"its credentials cannot be read ({exc})"
        else:
            problem = peer_problem(peer, os.geteuid(), peer_role="worker")
        if problem is None:
            return True
        self.refused_peers += 1
        log.error("refused a connection on %s: %s", self.socket_path, problem)
        return False

    async def _serve_worker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            header = await reader.readexactly(protocol.HEADER.size)
            hello = protocol.decode(await reader.readexactly(protocol.frame_length(header)))
            if hello.get("op") != "hello" or hello.get("protocol") != protocol.PROTOCOL_VERSION:
                raise ProtocolError(f"expected hello (protocol {protocol.PROTOCOL_VERSION})")
            worker = hello["worker"]
            model = ModelInfo.from_hello(hello["model"])
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, KeyError) as exc:
            log.error("a worker connected but did not say hello properly: %r", exc)
            return
        if self.model is None:
            self.model = model
        elif model != self.model:
            log.error("worker pid %s serves a different model; refusing it", worker.get("pid"))
            return
        link = WorkerLink(
            reader,
            writer,
            slot=int(worker["slot"]),
            of=int(worker.get("of", 1)),
            pid=int(worker["pid"]),
            generation=int(worker["generation"]),
            model=model,
        )
        self._links[link.slot] = link
        self._worker_seen_at = self.clock()
        self.expected_workers = link.of
        log.info(
            "worker slot %d pid %d generation %d connected", link.slot, link.pid, link.generation
        )
        self._wake_a_waiter()
        self._notify(self.on_worker_up, link)
        await link.read_answers()
        if self._links.get(link.slot) is link:
            del self._links[link.slot]
        if not self._links:
            self._worker_seen_at = self.clock()  # the last one just left
        self._lent.discard(link)
        crashed = not link.retiring and not self._closing
        if crashed:
            log.warning("worker slot %d pid %d disconnected", link.slot, link.pid)
        self._notify(self.on_worker_down, link, crashed)

    def _notify(self, callback: Callable[..., None] | None, *args: Any) -> None:
        self._changed.set()
        if callback is not None:
            callback(*args)
