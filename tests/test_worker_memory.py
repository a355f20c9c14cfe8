"""What each worker costs in memory (rscore.r_scorer.memory) and the sidecar's gauges of it.

The smaps_rollup parser and the memory file by cases; then real R: forked workers
share the model's pages (each holds privately a small part of a model that spawned
workers each hold whole), and the sidecar's /metrics shows every worker's PSS and
private bytes by slot.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_workers import score, started

from rscore.r_scorer.memory import (
    MEMORY_NAME,
    Memory,
    WorkerMemory,
    parse_smaps_rollup,
    read_memory_file,
    read_process_memory,
    write_memory_file,
)
from rscore.sidecar.admission import Dispatcher
from rscore.sidecar.metrics import SidecarMetrics

ROLLUP = """\
55d4f7e3c000-7ffd5a1f2000 ---p 00000000 00:00 0                          [rollup]
Rss:              307200 kB
Pss:              102400 kB
Pss_Anon:          90000 kB
Shared_Clean:     200000 kB
Shared_Dirty:       4000 kB
Private_Clean:      1200 kB
Private_Dirty:      2000 kB
Referenced:       307200 kB
Anonymous:        290000 kB
Swap:                  0 kB
"""


def test_smaps_rollup_totals_in_bytes() -> None:
    assert parse_smaps_rollup(ROLLUP) == Memory(
        rss=307200 * 1024,
        pss=102400 * 1024,
        private=(1200 + 2000) * 1024,
        shared=(200000 + 4000) * 1024,
    )


@pytest.mark.parametrize("text", ["", "garbage\n", "Rss: lots kB\n"])
def test_smaps_rollup_without_numbers_reads_as_zero(text: str) -> None:
    assert parse_smaps_rollup(text) == Memory(0, 0, 0, 0)


def test_this_process_reads_its_own_memory_and_a_gone_one_none() -> None:
    own = read_process_memory(os.getpid())
    assert own is not None
    assert 0 < own.private <= own.rss
    assert 0 < own.pss <= own.rss
    assert read_process_memory(2**22 + 1) is None  # above pid_max's default: no such process


def test_memory_file_round_trips_and_a_bad_one_reads_empty(tmp_path: Path) -> None:
    path = tmp_path / MEMORY_NAME
    workers = [WorkerMemory(0, 10, 1, 5000, 100, 9000), WorkerMemory(-1, 9, 0, 7000, 6000, 9000)]
    write_memory_file(path, workers)
    assert read_memory_file(path) == workers
    assert read_memory_file(tmp_path / "missing.json") == []
    path.write_text('{"workers": [{"slot": 0}]}')
    assert read_memory_file(path) == []


# A model of 96 MB in one large numeric vector (R keeps its data in one block of pages,
# its header on the first: R's collector writes mark bits there, never in the data).
MODEL_MB = 96
BIG_MODEL_R = f"""
init <- function(model_dir) list(weights = runif({MODEL_MB} * 131072))
score <- function(state, data) data$x * state$weights[1]
"""


@pytest.mark.real_r
@pytest.mark.parametrize("worker_start", ["fork", "spawn"])
async def test_forked_workers_share_the_model_and_spawned_ones_do_not(
    tmp_path: Path, worker_start: str
) -> None:
    bundle = tmp_path / "big"
    bundle.mkdir()
    (bundle / "score.R").write_text(BIG_MODEL_R)
    model_bytes = MODEL_MB * 2**20
    async with started(bundle, tmp_path, 2, worker_start=worker_start) as running:
        for _ in range(20):  # served a little: R's collector ran in each
            await score(running.pool, [{"x": 1.0}])
        workers = [memory for memory in running.supervisor.measure_memory() if memory.slot >= 0]
    assert sorted(memory.slot for memory in workers) == [0, 1]
    for memory in workers:
        assert memory.private_bytes <= memory.rss_bytes
        if worker_start == "fork":  # the model's pages are the zygote's, shared
            # What a forked worker writes is its own (R's small objects, whose headers a
            # full collection rewrites: some 30 MB whatever the model), not the model.
            assert memory.private_bytes < model_bytes * 0.5
            assert memory.pss_bytes < memory.rss_bytes
        else:  # each loaded its own copy
            assert memory.private_bytes > model_bytes


@pytest.mark.real_r
async def test_the_sidecar_shows_each_workers_memory_by_slot(tmp_path: Path) -> None:
    bundle = tmp_path / "big"
    bundle.mkdir()
    (bundle / "score.R").write_text(BIG_MODEL_R)
    async with started(bundle, tmp_path, 2) as running:
        registry = CollectorRegistry()
        SidecarMetrics(registry).watch(Dispatcher(max_queue_per_worker=1), running.pool)
        memory_file = running.pool.socket_path.parent / MEMORY_NAME
        await asyncio.wait_for(_until(memory_file.exists), 30)  # written once started
        exposition = generate_latest(registry).decode()
        pids = {str(link.slot): link.pid for link in running.pool.workers}
    families = {family.name: family for family in text_string_to_metric_families(exposition)}
    for name in ("rscore_worker_pss_bytes", "rscore_worker_private_bytes"):
        samples = {sample.labels["slot"]: sample.value for sample in families[name].samples}
        assert set(samples) == {*pids, "zygote"}
        assert all(value > 0 for value in samples.values())
    pss = {s.labels["slot"]: s.value for s in families["rscore_worker_pss_bytes"].samples}
    private = {s.labels["slot"]: s.value for s in families["rscore_worker_private_bytes"].samples}
    for slot in pids:
        assert private[slot] < pss[slot]  # PSS adds its share of the shared pages
    # The scorer's cold start comes the same way (rscore.r_scorer.socket_files), by phase.
    cold = {
        s.labels["phase"]: s.value for s in families["rscore_scorer_cold_start_seconds"].samples
    }
    assert set(cold) == {"r_start", "packages", "model", "ready"}
    assert cold["ready"] >= cold["r_start"] > 0
    written = {str(memory.slot): memory for memory in read_memory_file(memory_file)}
    for slot, pid in pids.items():
        assert written[slot].pid == pid


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)
