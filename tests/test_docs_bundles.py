"""docs/bundles.md's worked score.R examples, built and scored as the page shows them.

Each example is a set of fenced blocks, each after a `<!-- example: NAME/FILE -->`
line: build.R (run by Rscript in the bundle folder), score.R, request.json and
answer.json. The bundle is loaded by real R in this process and its answer compared
with the page's (which rounds to 7 significant digits).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.prototype import coerce
from rscore.r_scorer.rmodel import load_model

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

DOC = Path(__file__).resolve().parent.parent / "docs" / "bundles.md"
BLOCK = re.compile(
    r"^<!-- example: (\w+)/([\w.]+) -->\n```\w*\n(.*?)^```$", re.MULTILINE | re.DOTALL
)
FILES = {"build.R", "score.R", "request.json", "answer.json"}


def examples() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name, file, text in BLOCK.findall(DOC.read_text()):
        found.setdefault(name, {})[file] = text
    return found


def test_the_page_has_the_three_examples_each_complete() -> None:
    found = examples()
    assert sorted(found) == ["matrix", "multi", "transform"]
    for files in found.values():
        assert set(files) == FILES


def close(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return list(got) == list(want) and all(close(got[k], want[k]) for k in want)
    return math.isclose(got, want, rel_tol=1e-6)


@pytest.mark.parametrize("name", ["transform", "multi", "matrix"])
def test_a_worked_example_answers_what_the_page_shows(tmp_path: Path, name: str) -> None:
    files = examples()[name]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "build.R").write_text(files["build.R"])
    (folder / "score.R").write_text(files["score.R"])
    subprocess.run(["Rscript", "build.R"], cwd=folder, check=True, capture_output=True, timeout=120)
    (folder / "build.R").unlink()
    model = load_model(read_bundle(folder))
    frame = coerce(parse_body(files["request.json"], model.prototype.known), model.prototype)
    got = model.score(frame).predictions
    want = json.loads(files["answer.json"])["predictions"]
    assert len(got) == len(want)
    assert all(close(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    assert orjson.dumps(got)  # JSON-ready as served
