"""The access log's buffer: lines reach stderr together, late by at most a few tens of
milliseconds, in order, and none is lost on an explicit flush (the server's exit)."""

from __future__ import annotations

import asyncio

import pytest

from rscore.sidecar import access_log


@pytest.fixture
def lines() -> access_log._Lines:
    return access_log._Lines()


async def test_lines_are_written_together_shortly_after(
    lines: access_log._Lines, capsys: pytest.CaptureFixture[str]
) -> None:
    lines.add(b'{"n": 1}\n')
    lines.add(b'{"n": 2}\n')
    assert capsys.readouterr().err == ""  # buffered: one write for both
    written = ""
    async with asyncio.timeout(5):  # a bound, not a speed: the timer flushes them
        while not written:
            await asyncio.sleep(access_log.FLUSH_DELAY_S)
            written = capsys.readouterr().err
    assert written == '{"n": 1}\n{"n": 2}\n'


async def test_flush_writes_everything_at_once(
    lines: access_log._Lines, capsys: pytest.CaptureFixture[str]
) -> None:
    lines.add(b'{"n": 1}\n')
    lines.flush()
    assert capsys.readouterr().err == '{"n": 1}\n'
    lines.flush()  # nothing left: writes nothing
    await asyncio.sleep(access_log.FLUSH_DELAY_S * 2)  # and the timer is gone
    assert capsys.readouterr().err == ""


async def test_a_burst_is_written_without_waiting(
    lines: access_log._Lines, capsys: pytest.CaptureFixture[str]
) -> None:
    line = b"x" * 1023 + b"\n"
    for _ in range(access_log.FLUSH_BYTES // len(line)):
        lines.add(line)
    assert len(capsys.readouterr().err) == access_log.FLUSH_BYTES


def test_without_an_event_loop_a_line_is_written_at_once(
    lines: access_log._Lines, capsys: pytest.CaptureFixture[str]
) -> None:
    lines.add(b'{"n": 1}\n')
    assert capsys.readouterr().err == '{"n": 1}\n'
