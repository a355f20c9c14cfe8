"""R's console in a worker: print(), message() and warnings become JSON log lines.

Issue 21: a package's start-up message or a `message()` in score.R used to reach stderr
raw, breaking "logs are JSON, one object per line". Real R, real `rscore scorer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import orjson
import pytest

from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.pool import SOCKET_NAME, WorkerPool
from rscore.r_scorer.prototype import coerce
from rscore.r_scorer.rconsole import LogConsole

CHATTY_SCORE_R = """\
packageStartupMessage("chatty package says hi")
init <- function(model_dir) {
  warning("init is warming up")
  cat("one line ", file = stderr()); cat("in two writes\\n", file = stderr())
  print("state ready")
  list(k = 2)
}
score <- function(state, data) {
  message("hello from score")
  data$x * state$k
}
"""


@pytest.mark.real_r
@pytest.mark.e2e
async def test_worker_logs_rs_console_as_json_lines(tmp_path: Path) -> None:
    bundle = tmp_path / "chatty"
    bundle.mkdir()
    (bundle / "score.R").write_text(CHATTY_SCORE_R)
    pool = WorkerPool(tmp_path / SOCKET_NAME)
    await pool.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rscore.cli", "scorer", str(bundle),
        "--socket-dir", str(tmp_path), "--workers", "1",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.wait_for(pool.wait_for_workers(1), 60)
        assert pool.model is not None
        frame = coerce(parse_body(orjson.dumps({"data": [{"x": 3}]})), pool.model.prototype)
        async with pool.acquire() as link:
            assert (await link.score(frame, 30)).predictions == [6]
        process.send_signal(signal.SIGTERM)
        await pool.close()
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await pool.close()
    assert process.returncode == 0
    records = [json.loads(line) for line in stderr.decode().splitlines()]  # only JSON lines
    from_r = {record["message"]: record for record in records if record["logger"] == "rscore.r"}
    expected = {
        "chatty package says hi": "INFO",
        "In init(model_dir) : init is warming up": "WARNING",
        "one line in two writes": "INFO",
        '[1] "state ready"': "INFO",
        "hello from score": "INFO",
    }
    for message, level in expected.items():
        assert message in from_r, (message, sorted(from_r))
        assert from_r[message]["level"] == level
        assert from_r[message]["bundle"] == "chatty"
        assert from_r[message]["slot"] == 0


def test_console_lines_levels_and_partial_writes(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.rconsole")
    caplog.set_level(logging.INFO, logger=logger.name)
    console = LogConsole(logger, {"bundle": "b", "slot": 1})
    console.write_warnerror("a message ")
    console.write_warnerror("in parts\nWarning: beware\n")
    console.write_warnerror("Error in f() : broken\n\n")
    console.write_print("[1] 1 2")
    assert [record.getMessage() for record in caplog.records] == [
        "a message in parts",
        "Warning: beware",
        "Error in f() : broken",
    ]
    console.flush()  # the print line, never ended by R
    console.warning("In init(model_dir) : careful\nsecond line")
    assert [(r.getMessage(), r.levelname) for r in caplog.records] == [
        ("a message in parts", "INFO"),
        ("Warning: beware", "WARNING"),
        ("Error in f() : broken", "ERROR"),
        ("[1] 1 2", "INFO"),
        ("In init(model_dir) : careful\nsecond line", "WARNING"),
    ]
    assert all((r.bundle, r.slot) == ("b", 1) for r in caplog.records)  # type: ignore[attr-defined]
