"""The model zoo over real HTTP: every family rscore adapts, as a plain saveRDS bundle.

examples/zoo/build_zoo.R (run by `make setup`, or here when its output is missing or
older than the script) fits one model per family on data sets that ship with R and
writes what each package's own predict() answers on 257 rows. Each bundle is served by
the sidecar with a real R worker behind it, and answers, to 1e-9, the same for a row
alone, for rows in requests merged into one R call, and for all 257 rows in one request
(more than the 256 rows a batch may merge, so it runs alone while a 1-row request waits).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from helpers import assert_same_predictions
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rscore.r_scorer.pool import WorkerPool
from rscore.r_scorer.supervisor import Supervisor
from rscore.sidecar.app import SidecarConfig, create_app, create_metrics_app

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "zoo" / "build_zoo.R"
BUILD = ROOT / "examples" / "zoo" / "build"

# Every bundle build_zoo.R makes (checked against its expected.json below).
FAMILIES = (
    "ranger", "cv-glmnet", "glmnet-binomial", "glmnet-multinomial", "lda", "qda", "polr",
    "multinom", "svm", "naive-bayes", "gam", "party-ctree", "partykit-ctree", "ksvm",
    "caret-train", "earth", "coxph", "survreg", "nls", "loess", "pls", "rq", "clm", "fda",
    "mda", "lmer", "lme", "zeroinfl", "glm-esoph", "random-forest", "rpart", "gbm",
)  # fmt: skip
BATCH_DELAY_MS = 150  # long enough for the concurrent requests to gather into one batch


def _stale(built: Path) -> bool:
    return not built.is_file() or built.stat().st_mtime < SCRIPT.stat().st_mtime


@pytest.fixture(scope="session")
def zoo() -> dict[str, Any]:
    """The zoo's expected answers, building the bundles first when missing or stale."""
    expected = BUILD / "expected.json"
    if _stale(expected):
        subprocess.run(
            ["Rscript", str(SCRIPT), str(BUILD)],
            check=True, capture_output=True, timeout=600, env={**os.environ, "TZ": "UTC"},
        )  # fmt: skip
    return json.loads(expected.read_text())


def test_every_bundle_of_the_zoo_is_tested(zoo: dict[str, Any]) -> None:
    assert sorted(zoo) == sorted(FAMILIES)


Post = Callable[[list[dict[str, Any]]], Awaitable[list[Any]]]


class Served:
    def __init__(self, client: TestClient, metrics: TestClient) -> None:
        self.client = client
        self.metrics_client = metrics

    async def predictions(self, rows: list[dict[str, Any]]) -> list[Any]:
        response = await self.client.post("/score", json={"dataframe_records": rows})
        answer = await response.json()
        assert response.status == 200, answer
        return answer["predictions"]

    async def r_calls(self) -> float:
        text = await (await self.metrics_client.get("/metrics")).text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "rscore_batch_rows_count":
                    return sample.value
        return 0.0


@pytest.fixture
async def serve(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[WorkerPool, Supervisor]] = []

    async def start(bundle: Path) -> Served:
        registry = CollectorRegistry()
        pool = WorkerPool(tmp_path / "sock" / "workers.sock")
        config = SidecarConfig(max_batch_delay_ms=BATCH_DELAY_MS)
        client = await aiohttp_client(create_app(config, pool=pool, registry=registry))
        supervisor = Supervisor(bundle, pool.socket_path, workers=1)
        started.append((pool, supervisor))
        await asyncio.to_thread(supervisor.start)
        await asyncio.wait_for(pool.wait_for_workers(1), 120)
        return Served(client, await aiohttp_client(create_metrics_app(registry)))

    yield start
    for pool, supervisor in started:
        await pool.close()
        await asyncio.to_thread(supervisor.stop)


@pytest.mark.parametrize("family", FAMILIES)
async def test_zoo_bundle_answers_as_its_package_alone_batched_and_over_a_batch(
    serve: Callable[..., Any], zoo: dict[str, Any], family: str
) -> None:
    rows, expected = zoo[family]["rows"], zoo[family]["predictions"]
    served = await serve(BUILD / family)

    # One row alone: R drops some 1-row answers to a vector; rscore must not.
    assert_same_predictions(await served.predictions(rows[:1]), expected[:1])

    # Requests of 1-3 rows sent at once: merged into fewer R calls than requests.
    sizes = [1, 2, 1, 3, 1, 1, 2, 1]
    starts = [1 + sum(sizes[:i]) for i in range(len(sizes))]
    calls_before = await served.r_calls()
    answers = await asyncio.gather(
        *(served.predictions(rows[at : at + size]) for at, size in zip(starts, sizes, strict=True))
    )
    for at, size, answer in zip(starts, sizes, answers, strict=True):
        assert_same_predictions(answer, expected[at : at + size])
    assert await served.r_calls() - calls_before < len(sizes)  # some were batched

    # All 257 rows in one request (over the batch limit), with a 1-row request beside it.
    whole, single = await asyncio.gather(served.predictions(rows), served.predictions(rows[5:6]))
    assert_same_predictions(whole, expected)
    assert_same_predictions(single, expected[5:6])
