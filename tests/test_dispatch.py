"""Finding predict() as R dispatches, checking [predict] keys, and naming what failed.

Real R through rpy2 in this process. The dispatch decision (R/rscore.R's
`.find_predict`) is called directly on objects of chosen classes; whole bundles are
written by Rscript and loaded with `load_model`, as a worker does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.errors import BundleError, ModelError
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.prototype import coerce
from rscore.r_scorer.rmodel import LoadedModel, load_model, start_r

pytestmark = pytest.mark.real_r  # markers: pyproject.toml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def r_home() -> str:
    return subprocess.run(["R", "RHOME"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(autouse=True)
def _r_home_set(r_home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """R.home() reads R_HOME, which conftest clears after each test; loading a package
    whose .onLoad asks for it (parallel, that party loads) needs it back."""
    monkeypatch.setenv("R_HOME", r_home)


def r_eval(code: str) -> Any:
    import rpy2.rinterface as ri

    env = start_r()
    return ri.baseenv["eval"](ri.parse(code), env)


def found(code: str) -> tuple[str, str, str]:
    """(class, package, kind) of the predict() method `.find_predict` picks."""
    answer = r_eval(f".find_predict({code})")
    fields = dict(zip(answer.names, answer, strict=True))
    return str(fields["class"][0]), str(fields["package"][0]), str(fields["kind"][0])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # The first class with a method wins, loaded or only registered: mgcv's
        # predict.gam, not stats' predict.glm, for c("gam", "glm", "lm").
        ('structure(list(), class = c("gam", "glm", "lm"))', ("gam", "mgcv", "S3")),
        ('structure(list(), class = c("zz_unknown", "glm", "lm"))', ("glm", "stats", "S3")),
        ('structure(list(), class = "lm")', ("lm", "stats", "S3")),
        ('structure(list(), class = "ranger")', ("ranger", "ranger", "S3")),
        ('structure(list(), class = c("svm.formula", "svm"))', ("svm", "e1071", "S3")),
        # S4: the class's package is loaded, then its S4 method (or its S3 one) is found.
        ("kernlab::ksvm(Species ~ ., data = iris)", ("ksvm", "kernlab", "S4")),
        ("party::ctree(Species ~ ., data = iris)", ("BinaryTree", "party", "S3")),
    ],
    ids=["gam-before-glm", "unknown-then-glm", "lm", "ranger", "svm", "ksvm-s4", "party-s4"],
)
def test_predict_is_found_as_r_dispatches(model: str, expected: tuple[str, str, str]) -> None:
    assert found(model) == expected


def test_no_method_names_every_class_the_packages_and_how_to_write_score_r() -> None:
    message = str(
        r_eval(
            '.no_predict_message(structure(list(), class = c("zz_mine", "zz_base")), '
            '", or add a score.R")'
        )[0]
    )
    libraries = [str(path) for path in r_eval(".libPaths()")]
    assert "'zz_mine', 'zz_base'" in message
    assert re.search(r"none of the \d+ packages installed in \d+ R librar", message)
    for library in libraries:
        assert library in message
    assert "score.R" in message
    assert "docs/bundles.md#writing-a-scorer" in message


def test_the_documented_score_r_section_exists() -> None:
    """The errors link to docs/bundles.md#writing-a-scorer: the heading must exist."""
    text = (ROOT / "docs" / "bundles.md").read_text()
    assert re.search(r"^## Writing a score\.R$", text, re.MULTILINE)


# --- bundles written by Rscript ------------------------------------------------------


def write_bundle(folder: Path, fit: str, toml: str = "") -> Path:
    folder.mkdir()
    subprocess.run(
        ["Rscript", "-e", f"saveRDS({fit}, 'model.rds')"],
        cwd=folder, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    if toml:
        (folder / "rscore.toml").write_text(toml)
    return folder


def score(model: LoadedModel, rows: list[dict[str, Any]]) -> list[Any]:
    frame = coerce(parse_body(orjson.dumps({"data": rows}), model.prototype.known), model.prototype)
    return model.score(frame).predictions


GLM = "glm(breaks ~ wool + tension, family = poisson, data = warpbreaks)"


@pytest.mark.parametrize(
    ("fit", "predict", "fragments"),
    [
        # predict.glm takes `...`: a key R would partially match to `type` is refused.
        (GLM, 'typ = "response"', ["key 'typ'", "stats::predict.glm()", "did you mean 'type'?",
                                   "'se.fit'"]),
        (GLM, 'tpye = "response"', ["key 'tpye'", "did you mean 'type'?"]),
        ("gbm::gbm(mpg ~ wt, data = mtcars, distribution = 'gaussian', n.trees = 20, "
         "n.minobsinnode = 3)",
         '"n.tree" = 20', ["key 'n.tree'", "did you mean 'n.trees'?"]),
        # ksvm's S4 method has no `...`: any key it does not name is refused.
        ("kernlab::ksvm(Species ~ ., data = iris)", "kernel_type = 1",
         ["key 'kernel_type'", "S4 predict() method for class 'ksvm'", "'coupler'"]),
        # The argument rscore passes the data in is never a [predict] key.
        ("ranger::ranger(Species ~ ., data = iris, num.trees = 5)", "data = 1",
         ["must not set 'data'", "ranger::predict.ranger()"]),
    ],
    ids=["glm-typ", "glm-tpye", "gbm-n-tree", "ksvm-closed", "ranger-data"],
)  # fmt: skip
def test_a_misspelt_predict_key_fails_at_start_up_naming_it(
    tmp_path: Path, fit: str, predict: str, fragments: list[str]
) -> None:
    folder = write_bundle(tmp_path / "b", fit, f"[predict]\n{predict}\n")
    with pytest.raises(BundleError) as raised:
        load_model(read_bundle(folder))
    for fragment in fragments:
        assert fragment in raised.value.message


@pytest.mark.parametrize(
    ("fit", "predict", "rows"),
    [
        (GLM, 'type = "response"', [{"wool": "A", "tension": "L"}]),
        # Not named by predict.glm or predict.lm, nor near a name: on through `...`.
        (GLM, "zz_extra = true", [{"wool": "A", "tension": "L"}]),
        # predict.cv.glmnet passes `exact` on to predict.glmnet, which names it.
        ("glmnet::cv.glmnet(as.matrix(mtcars[, c('wt', 'hp', 'qsec')]), mtcars$mpg)",
         "exact = false", [{"wt": 2.5, "hp": 110, "qsec": 18}]),
    ],
    ids=["glm-type", "glm-unknown-through-dots", "cv-glmnet-exact"],
)  # fmt: skip
def test_predict_keys_the_method_takes_load_and_score(
    tmp_path: Path, fit: str, predict: str, rows: list[dict[str, Any]]
) -> None:
    folder = write_bundle(tmp_path / "b", fit, f"[predict]\n{predict}\n")
    assert len(score(load_model(read_bundle(folder)), rows)) == 1


def test_an_unsupported_class_fails_at_start_up_pointing_to_score_r(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", "structure(list(k = 1), class = 'zz_custom')")
    with pytest.raises(BundleError) as raised:
        load_model(read_bundle(folder))
    message = raised.value.message
    assert "no predict() method for class 'zz_custom'" in message
    assert "add a score.R that defines score(state, data)" in message
    assert "docs/bundles.md#writing-a-scorer" in message


def test_an_s4_model_needs_no_packages_entry(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", "kernlab::ksvm(mpg ~ wt + hp, data = mtcars)")
    model = load_model(read_bundle(folder))
    assert model.packages == ("kernlab",)
    assert len(score(model, [{"wt": 2.5, "hp": 110}])) == 1


def test_a_predict_error_names_predict_and_the_class_not_score(tmp_path: Path) -> None:
    # log() of a string: predict.lm fails on the request (hp is used inside an expression,
    # so the prototype lets any JSON type through).
    folder = write_bundle(tmp_path / "b", "lm(mpg ~ log(hp), data = mtcars)")
    model = load_model(read_bundle(folder))
    with pytest.raises(ModelError) as raised:
        score(model, [{"hp": "many"}])
    assert raised.value.message.startswith("predict() for class 'lm' failed: ")
    assert "score()" not in raised.value.message


def test_a_predict_method_without_newdata_fails_at_start_up(tmp_path: Path) -> None:
    # predict.Arima forecasts n.ahead steps: request rows would vanish into its `...`.
    folder = write_bundle(tmp_path / "b", "arima(lh, order = c(1, 0, 0))")
    with pytest.raises(BundleError) as raised:
        load_model(read_bundle(folder))
    message = raised.value.message
    assert "stats::predict.Arima() takes no 'newdata' argument" in message
    assert "add a score.R that defines score(state, data)" in message
    assert "docs/bundles.md#writing-a-scorer" in message
