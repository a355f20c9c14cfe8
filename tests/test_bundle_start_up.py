"""Bundles that used to load and then fail every request, or fail with R's bare words.

Issue 21: a score.R with init() but no score() (every request a 500), and a model.rds
written by save() ("unknown input format"). Real R through rpy2 in this process; the
files are written by Rscript.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.errors import BundleError
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.prototype import coerce
from rscore.r_scorer.rmodel import load_model

pytestmark = pytest.mark.real_r  # markers: pyproject.toml


def r(code: str, where: Path) -> None:
    subprocess.run(["Rscript", "-e", code], cwd=where, check=True, capture_output=True)


def bundle(tmp_path: Path, score_r: str | None = None) -> Path:
    folder = tmp_path / "b"
    folder.mkdir()
    if score_r is not None:
        (folder / "score.R").write_text(score_r)
    return folder


def test_init_without_score_fails_at_start_up_naming_score(tmp_path: Path) -> None:
    folder = bundle(tmp_path, "init <- function(model_dir) list(k = 2)\n")
    with pytest.raises(BundleError) as raised:
        load_model(read_bundle(folder))
    message = raised.value.message
    assert "defines init() but no score()" in message
    assert "define score(state, data) in score.R" in message
    assert "remove init()" in message


def test_init_without_score_is_fine_when_predict_can_score_its_state(tmp_path: Path) -> None:
    """The contract's default score, predict(state, newdata = data), still applies."""
    folder = bundle(
        tmp_path, "init <- function(model_dir) readRDS(file.path(model_dir, 'fit.rds'))\n"
    )
    r('saveRDS(lm(dist ~ speed, cars), "b/fit.rds")', tmp_path)
    model = load_model(read_bundle(folder))
    frame = coerce(parse_body(b'{"data": [{"speed": 10}]}'), model.prototype)
    assert len(model.score(frame).predictions) == 1


def test_init_returning_an_unscorable_object_without_score_points_to_score(
    tmp_path: Path,
) -> None:
    folder = bundle(tmp_path, "init <- function(model_dir) structure(list(), class = 'zzmine')\n")
    with pytest.raises(BundleError, match=r"'zzmine'.*define score\(state, data\) in score\.R"):
        load_model(read_bundle(folder))


def test_model_rds_holding_a_plain_list_fails_at_start_up(tmp_path: Path) -> None:
    folder = bundle(tmp_path)
    r('saveRDS(list(fit = lm(dist ~ speed, cars)), "b/model.rds")', tmp_path)
    with pytest.raises(BundleError, match=r"model\.rds holds a list .*score\(state, data\)"):
        load_model(read_bundle(folder))


@pytest.mark.parametrize(
    ("score_r", "expected"),
    [
        ("score <- function(data) data$x\n", "score() must take two arguments"),
        ("init <- function() 1\nscore <- function(s, d) 1\n", "init() must take one argument"),
        ("score <- 'predict'\n", "'score' must be a function"),
    ],
)
def test_score_r_functions_must_fit_the_contract(
    tmp_path: Path, score_r: str, expected: str
) -> None:
    folder = bundle(tmp_path, score_r)
    r('saveRDS(lm(dist ~ speed, cars), "b/model.rds")', tmp_path)
    with pytest.raises(BundleError, match=re.escape(f"score.R: {expected}")):
        load_model(read_bundle(folder))


@pytest.mark.parametrize(
    "save_arguments", ["", ", compress = 'bzip2'", ", compress = 'xz'", ", compress = FALSE",
                       ", ascii = TRUE", ", version = 2"],
)  # fmt: skip
def test_model_rds_written_by_save_says_use_saverds(tmp_path: Path, save_arguments: str) -> None:
    folder = bundle(tmp_path)
    r(f'fit <- lm(dist ~ speed, cars); save(fit, file = "b/model.rds"{save_arguments})', tmp_path)
    with pytest.raises(BundleError) as raised:
        load_model(read_bundle(folder))
    message = raised.value.message
    assert "\n" not in message
    assert "model.rds was written by save()" in message
    assert 'saveRDS(x, "model.rds")' in message
    assert "unknown input format" not in message


def test_ptype_rds_written_by_save_says_use_saverds(tmp_path: Path) -> None:
    folder = bundle(tmp_path)
    r(
        'saveRDS(lm(dist ~ speed, cars), "b/model.rds"); p <- cars[0, "speed", drop = FALSE]; '
        'save(p, file = "b/ptype.rds")',
        tmp_path,
    )
    with pytest.raises(BundleError, match=r"ptype\.rds was written by save\(\)"):
        load_model(read_bundle(folder))


def test_a_corrupt_model_rds_keeps_rs_own_words(tmp_path: Path) -> None:
    folder = bundle(tmp_path)
    (folder / "model.rds").write_bytes(b"not an R file at all")
    with pytest.raises(BundleError, match=r"model\.rds: unknown input format"):
        load_model(read_bundle(folder))
