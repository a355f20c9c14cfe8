"""rscore.sidecar.watch on real files: in-place writes, rename-over writes, the Kubernetes
Secret-volume swap, files missing for a while, callbacks that fail."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from certs import SecretVolume

from rscore.sidecar.watch import FileWatcher, ReloadError, file_identity

TICK_S = 0.05
TIMEOUT_S = 5.0  # the contract's bound on picking up a change


class Loader:
    """An on_change callback that loads files and refuses content starting "bad"."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.state = self.read()  # what the application runs with
        self.calls = 0

    def read(self) -> tuple[str, ...]:
        return tuple(p.read_text() for p in self.paths)

    def __call__(self) -> None:
        self.calls += 1
        new = self.read()  # raises FileNotFoundError for a missing file
        if any(text.startswith("bad") for text in new):
            raise ValueError(f"unusable content: {new}")  # contents: must not be logged
        self.state = new


async def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(TICK_S / 5)


async def ticks(watcher: FileWatcher, n: int) -> None:
    """Wait until the watcher has looked at the files `n` more times."""
    start = watcher.ticks
    await wait_until(lambda: watcher.ticks >= start + n)


@pytest.fixture
async def watch() -> AsyncIterator[Callable[..., FileWatcher]]:
    """Starts watchers (interval 0.05 s) and stops them after the test."""
    started: list[FileWatcher] = []

    async def start(paths: list[Path], on_change: Callable[[], None]) -> FileWatcher:
        watcher = FileWatcher(paths, on_change, interval_s=TICK_S)
        await watcher.start()
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        await watcher.stop()
        assert not watcher.running


async def test_in_place_write(tmp_path: Path, watch: Callable[..., FileWatcher]) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("one\n")
    loader = Loader(path)
    watcher = await watch([path], loader)
    await ticks(watcher, 3)
    assert loader.calls == 0  # nothing changed, nothing reloaded
    with path.open("w") as f:  # truncate and write: same inode
        f.write("two, longer\n")
    await wait_until(lambda: loader.state == ("two, longer\n",))


async def test_rename_over(tmp_path: Path, watch: Callable[..., FileWatcher]) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("one\n")
    loader = Loader(path)
    await watch([path], loader)
    for text in ("two\n", "three\n"):  # same size as before: the inode tells them apart
        tmp = tmp_path / ".keys.txt.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        await wait_until(lambda text=text: loader.state == (text,))


async def test_secret_volume_swap(tmp_path: Path, watch: Callable[..., FileWatcher]) -> None:
    vol = SecretVolume(tmp_path / "secret", {"a": b"a1", "b": b"b1"})
    loader = Loader(vol.path("a"), vol.path("b"))
    await watch([vol.path("a"), vol.path("b")], loader)
    for n in (2, 3, 4):
        old = vol.generation
        vol.rotate({"a": f"a{n}".encode(), "b": f"b{n}".encode()})
        assert not old.exists()  # the old generation is gone, as after the kubelet
        await wait_until(lambda n=n: loader.state == (f"a{n}", f"b{n}"))
    assert loader.calls == 3  # one atomic swap, one reload


async def test_temporarily_missing_file(
    tmp_path: Path, watch: Callable[..., FileWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("one\n")
    loader = Loader(path)
    watcher = await watch([path], loader)
    path.unlink()
    await ticks(watcher, 6)
    assert watcher.running  # a missing file does not end the watching
    assert loader.calls == 0  # ... nor does it reach the callback
    assert loader.state == ("one\n",)
    path.write_text("two\n")
    await wait_until(lambda: loader.state == ("two\n",))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_dangling_secret_volume_symlink(
    tmp_path: Path, watch: Callable[..., FileWatcher]
) -> None:
    """`..data` pointing nowhere for a while (a hand-made rotation gone half-way)."""
    vol = SecretVolume(tmp_path / "secret", {"a": b"a1"})
    loader = Loader(vol.path("a"))
    watcher = await watch([vol.path("a")], loader)
    data = vol.folder / SecretVolume.DATA
    target = os.readlink(data)
    data.unlink()
    os.symlink("..nowhere", data)
    await ticks(watcher, 4)
    assert watcher.running
    assert loader.calls == 0
    data.unlink()
    os.symlink(target, data)
    vol.rotate({"a": b"a2"})
    await wait_until(lambda: loader.state == ("a2",))


async def test_failing_callback_keeps_state_and_retries(
    tmp_path: Path, watch: Callable[..., FileWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rscore.watch")
    path = tmp_path / "keys.txt"
    path.write_text("good-1\n")
    loader = Loader(path)
    watcher = await watch([path], loader)
    path.write_text("bad-secret-xyz\n")
    await wait_until(lambda: loader.calls >= 1)
    await ticks(watcher, 6)  # a few retries, then it waits for the next change
    assert loader.state == ("good-1\n",)  # old state kept
    assert 2 <= loader.calls <= 4, loader.calls  # retried on the next ticks, then stopped
    assert watcher.running
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per change, not once per tick
    assert str(path) in warnings[0].getMessage()
    assert "ValueError" in warnings[0].getMessage()
    assert "secret-xyz" not in caplog.text  # a file's contents never reach the log
    calls = loader.calls
    path.write_text("good-2, after all\n")  # the next change is tried again
    await wait_until(lambda: loader.state == ("good-2, after all\n",))
    assert loader.calls == calls + 1
    assert "reloaded" in caplog.text


async def test_retry_on_next_tick_when_caught_half_written(
    tmp_path: Path, watch: Callable[..., FileWatcher]
) -> None:
    """The callback saw a half-written state once; the same identities succeed next tick."""
    path = tmp_path / "cert.pem"
    path.write_text("v1\n")
    outcomes = [ValueError("half-written"), None]
    loaded: list[str] = []

    def on_change() -> None:
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome
        loaded.append(path.read_text())

    watcher = await watch([path], on_change)
    path.write_text("v2, complete\n")
    await wait_until(lambda: loaded == ["v2, complete\n"])
    await ticks(watcher, 4)
    assert loaded == ["v2, complete\n"]  # once applied, no more calls without a change


async def test_reload_error_messages_are_logged(
    tmp_path: Path, watch: Callable[..., FileWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{}")

    def on_change() -> None:
        raise ReloadError(f"{path}: no usable key")

    await watch([path], on_change)
    path.write_text("{ }\n")
    await wait_until(lambda: "no usable key" in caplog.text)
    assert "ReloadError" in caplog.text


async def test_start_twice_and_stop_twice(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    watcher = FileWatcher([path], lambda: None, interval_s=TICK_S)
    assert not watcher.running
    await watcher.start()
    await watcher.start()
    assert watcher.running
    await watcher.stop()
    await watcher.stop()
    assert not watcher.running


def test_constructor_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one path"):
        FileWatcher([], lambda: None)
    with pytest.raises(ValueError, match="interval_s"):
        FileWatcher([tmp_path], lambda: None, interval_s=0)


# --- file_identity --------------------------------------------------------------------


def _stat_identity(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize(
    "case",
    [
        "regular file",
        "symlink",
        "symlink chain",
        "relative symlink",
        "secret volume file",
        "directory",
        "missing",
        "dangling symlink",
        "symlink loop",
    ],
)
def test_file_identity(tmp_path: Path, case: str) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"12345")
    vol = SecretVolume(tmp_path / "vol", {"tls.crt": b"abc"})
    link, link2 = tmp_path / "link", tmp_path / "link2"
    path: Path
    expected: tuple[int, int, int, int] | None
    match case:
        case "regular file":
            path, expected = target, _stat_identity(target)
            assert expected[2] == 5
        case "symlink":
            link.symlink_to(target)
            path, expected = link, _stat_identity(target)
        case "symlink chain":
            link.symlink_to(target)
            link2.symlink_to(link)
            path, expected = link2, _stat_identity(target)
        case "relative symlink":
            link.symlink_to("target")
            path, expected = link, _stat_identity(target)
        case "secret volume file":
            path = vol.path("tls.crt")
            expected = _stat_identity(vol.generation / "tls.crt")
        case "directory":
            path, expected = tmp_path, _stat_identity(tmp_path)
        case "missing":
            path, expected = tmp_path / "nope", None
        case "dangling symlink":
            link.symlink_to(tmp_path / "nope")
            path, expected = link, None
        case "symlink loop":
            link.symlink_to(link2)
            link2.symlink_to(link)
            path, expected = link, None
    assert file_identity(path) == expected


def test_file_identity_tracks_changes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    first = file_identity(path)
    assert first is not None
    with path.open("ab") as f:  # in place: same inode, new size
        f.write(b"+")
    grown = file_identity(path)
    assert grown is not None
    assert grown[:2] == first[:2]
    assert grown[2] == 4
    tmp = tmp_path / "f.tmp"
    tmp.write_bytes(b"one+")
    os.replace(tmp, path)  # rename-over: same size, new inode
    replaced = file_identity(path)
    assert replaced is not None
    assert replaced[1] != grown[1]
    vol = SecretVolume(tmp_path / "vol", {"k": b"same"})
    before = file_identity(vol.path("k"))
    vol.rotate({"k": b"same"})  # same bytes, new generation: a change all the same
    assert file_identity(vol.path("k")) != before


# --- missing files past the grace, and a return to the applied state -----------------


async def test_a_file_missing_past_the_grace_is_a_change(tmp_path: Path) -> None:
    """on_change decides what a missing file means (the credentials drop what it held)."""
    path = tmp_path / "keys.txt"
    path.write_text("one\n")
    seen: list[bool] = []
    watcher = FileWatcher(
        [path], lambda: seen.append(path.exists()), interval_s=TICK_S, missing_grace_s=0.2
    )
    await watcher.start()
    try:
        path.unlink()
        await wait_until(lambda: seen == [False])
        await ticks(watcher, 4)
        assert seen == [False]  # once: a missing file that stays missing is no new change
        path.write_text("two\n")
        await wait_until(lambda: seen == [False, True])
    finally:
        await watcher.stop()


async def test_a_gap_shorter_than_the_grace_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("one\n")
    calls: list[str] = []
    watcher = FileWatcher(
        [path], lambda: calls.append(path.read_text()), interval_s=TICK_S, missing_grace_s=60
    )
    await watcher.start()
    try:
        path.unlink()
        await ticks(watcher, 6)
        assert calls == []
    finally:
        await watcher.stop()


async def test_a_return_to_the_applied_state_after_a_failure_is_reloaded(
    tmp_path: Path, watch: Callable[..., FileWatcher]
) -> None:
    """What a failed on_change left in effect is the callback's business (the
    credentials report a failure until a reload succeeds), so putting the very file
    back (same inode, same mtime) is reloaded too."""
    path = tmp_path / "keys.txt"
    path.write_text("good\n")
    loader = Loader(path)
    await watch([path], loader)
    aside = tmp_path / "keys.txt.orig"
    os.rename(path, aside)
    path.write_text("bad edit\n")
    await wait_until(lambda: loader.calls >= 1)
    calls = loader.calls
    os.replace(aside, path)  # the original file, as it was
    await wait_until(lambda: loader.calls > calls)
    assert loader.state == ("good\n",)
