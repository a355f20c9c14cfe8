"""rscore.r_scorer.socket_files: the scorer's state files beside its socket, and the sidecar's
cold-start gauge read from one. No R: the files are written here as the scorer would."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rscore.r_scorer.socket_files import (
    COLD_START_NAME,
    COLD_START_PHASES,
    read_cold_start,
    replace_json,
    write_cold_start,
)
from rscore.sidecar.admission import Dispatcher
from rscore.sidecar.metrics import SidecarMetrics

COLD = {"r_start_s": 0.41, "packages_s": 0.12, "model_s": 0.03, "ready_s": 0.93}


def test_a_cold_start_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / COLD_START_NAME
    write_cold_start(path, {**COLD, "not_a_phase": 7.0})
    assert read_cold_start(path) == COLD
    assert set(orjson.loads(path.read_bytes())) == set(COLD_START_PHASES)
    assert not list(tmp_path.glob(".*.partial"))  # the partial file was renamed over


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, {}),  # no file: the scorer has not finished starting
        (b"{not json", {}),
        (b"[1, 2]", {}),
        (orjson.dumps({"ready_s": -1.0, "model_s": 0.5}), {"model_s": 0.5}),
        (orjson.dumps({"ready_s": True, "r_start_s": "1"}), {}),
        (b'{"ready_s": 1e999}', {}),  # orjson reads it as infinity: not a duration
    ],
    ids=["missing", "garbled", "not-an-object", "negative", "wrong-types", "infinite"],
)
def test_a_reader_keeps_only_durations(
    tmp_path: Path, content: bytes | None, expected: Any
) -> None:
    path = tmp_path / COLD_START_NAME
    if content is not None:
        path.write_bytes(content)
    assert read_cold_start(path) == expected


def test_replace_json_replaces_a_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    replace_json(path, {"a": 1})
    replace_json(path, {"b": 2})
    assert orjson.loads(path.read_bytes()) == {"b": 2}


def _cold_start_samples(socket_dir: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    pool = SimpleNamespace(workers=[], model=None, socket_path=socket_dir / "scorer.sock")
    SidecarMetrics(registry).watch(Dispatcher(max_queue_per_worker=1), pool)  # type: ignore[arg-type]
    page = generate_latest(registry).decode()
    return {
        sample.labels["phase"]: sample.value
        for family in text_string_to_metric_families(page)
        if family.name == "rscore_scorer_cold_start_seconds"
        for sample in family.samples
    }


def test_the_sidecar_exposes_the_scorer_cold_start_by_phase(tmp_path: Path) -> None:
    assert _cold_start_samples(tmp_path) == {}  # nothing until the scorer has written it
    write_cold_start(tmp_path / COLD_START_NAME, COLD)
    samples = _cold_start_samples(tmp_path)
    assert samples.keys() == {"r_start", "packages", "model", "ready"}
    assert samples["ready"] == pytest.approx(0.93)
    assert all(math.isfinite(v) for v in samples.values())
