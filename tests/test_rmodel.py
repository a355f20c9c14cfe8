"""The R side in this process: prototypes read from models, and result shapes.

Real R through rpy2. Bundles here are score.R files with an init(), so the shapes of
score()'s result can be chosen exactly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.errors import BundleError, ModelError
from rscore.r_scorer.payload import parse_body
from rscore.r_scorer.prototype import Column, Prototype, coerce
from rscore.r_scorer.rmodel import LoadedModel, load_model

pytestmark = pytest.mark.real_r  # markers: pyproject.toml


def bundle_with_score(tmp_path: Path, score_body: str, init: str = "list()") -> LoadedModel:
    (tmp_path / "score.R").write_text(
        f"init <- function(model_dir) {init}\nscore <- function(state, data) {score_body}\n"
    )
    return load_model(read_bundle(tmp_path))


def score_rows(model: LoadedModel, rows: list[dict]) -> list:
    frame = coerce(parse_body(__import__("orjson").dumps({"data": rows})), model.prototype)
    return model.score(frame).predictions


@pytest.mark.parametrize(
    ("score_body", "expected"),
    [
        ("data$x * 2", [2.0, 4.0, 6.0]),
        ("as.integer(data$x)", [1, 2, 3]),
        ("data$x > 1.5", [False, True, True]),
        ('paste0("r", data$x)', ["r1", "r2", "r3"]),
        ('factor(c("b", "a", "b"), levels = c("a", "b"))', ["b", "a", "b"]),
        ("c(1, NA, NaN)", [1.0, None, None]),
        ("c(Inf, -Inf, 0)", [None, None, 0.0]),
        ("c(TRUE, NA, FALSE)", [True, None, False]),
        ('c("x", NA, "z")', ["x", None, "z"]),
        ("c(NA_integer_, 5L, 6L)", [None, 5, 6]),
        ("setNames(data$x, c('a', 'b', 'c'))", [1.0, 2.0, 3.0]),
        ("cbind(lo = data$x - 1, hi = data$x + 1)", [
            {"lo": 0.0, "hi": 2.0}, {"lo": 1.0, "hi": 3.0}, {"lo": 2.0, "hi": 4.0}
        ]),
        ("cbind(data$x, -data$x)", [
            {"V1": 1.0, "V2": -1.0}, {"V1": 2.0, "V2": -2.0}, {"V1": 3.0, "V2": -3.0}
        ]),
        ("array(data$x, dim = c(3, 1, 1), dimnames = list(NULL, 'p', NULL))", [
            {"p": 1.0}, {"p": 2.0}, {"p": 3.0}
        ]),
        ("data.frame(label = factor(c('u', 'v', 'u')), n = 1:3)", [
            {"label": "u", "n": 1}, {"label": "v", "n": 2}, {"label": "u", "n": 3}
        ]),
        ("list(a = data$x, b = c('p', 'q', 'r'))", [
            {"a": 1.0, "b": "p"}, {"a": 2.0, "b": "q"}, {"a": 3.0, "b": "r"}
        ]),
    ],
    ids=[
        "double", "integer", "logical", "character", "factor-labels", "na-nan",
        "infinite", "logical-na", "character-na", "integer-na", "named-vector",
        "matrix-colnames", "matrix-no-colnames", "3d-array-trailing-1", "data-frame",
        "named-list",
    ],
)  # fmt: skip
def test_result_shapes(tmp_path: Path, score_body: str, expected: list) -> None:
    model = bundle_with_score(tmp_path, score_body)
    assert score_rows(model, [{"x": 1}, {"x": 2}, {"x": 3}]) == expected


def test_one_row_matrix_stays_a_row(tmp_path: Path) -> None:
    model = bundle_with_score(tmp_path, "cbind(a = data$x, b = data$x * 10)")
    assert score_rows(model, [{"x": 2}]) == [{"a": 2.0, "b": 20.0}]


@pytest.mark.parametrize(
    ("score_body", "expected"),
    [
        # A single unnamed column is the plain vector it stands for, not {"V1": x}.
        ("cbind(data$x * 2)", [2.0, 4.0, 6.0]),
        ("array(data$x, dim = c(3, 1, 1))", [1.0, 2.0, 3.0]),
        # A 1-d array (mgcv's predict.gam) is a vector.
        ("array(data$x * 3, dim = 3, dimnames = list(c('a', 'b', 'c')))", [3.0, 6.0, 9.0]),
        # Per-row components of a list, a matrix's columns as <name>.<column> (MASS::lda).
        ("list(class = factor(c('u', 'v', 'u')), posterior = cbind(u = data$x, v = -data$x))", [
            {"class": "u", "posterior.u": 1.0, "posterior.v": -1.0},
            {"class": "v", "posterior.u": 2.0, "posterior.v": -2.0},
            {"class": "u", "posterior.u": 3.0, "posterior.v": -3.0},
        ]),
        ("data.frame(a = data$x, m = I(cbind(p = data$x, q = 0)))", [
            {"a": 1.0, "m.p": 1.0, "m.q": 0.0}, {"a": 2.0, "m.p": 2.0, "m.q": 0.0},
            {"a": 3.0, "m.p": 3.0, "m.q": 0.0},
        ]),
    ],
    ids=["one-unnamed-column", "n-1-1-array", "1d-array", "list-components", "frame-matrix"],
)  # fmt: skip
def test_the_shape_rule(tmp_path: Path, score_body: str, expected: list) -> None:
    model = bundle_with_score(tmp_path, score_body)
    assert score_rows(model, [{"x": 1}, {"x": 2}, {"x": 3}]) == expected


@pytest.mark.parametrize(
    "score_body",
    [
        # R's drop = TRUE: a 1-row probability matrix becomes a named vector
        # (nnet::multinom, MASS::polr); it is still that one row.
        "{ p <- cbind(a = data$x, b = 1 - data$x); if (nrow(p) == 1) p[1, ] else p }",
        "cbind(a = data$x, b = 1 - data$x)",
    ],
    ids=["dropped-to-named-vector", "matrix"],
)
def test_one_row_answers_as_in_a_batch(tmp_path: Path, score_body: str) -> None:
    model = bundle_with_score(tmp_path, score_body)
    assert score_rows(model, [{"x": 0.25}]) == [{"a": 0.25, "b": 0.75}]
    assert score_rows(model, [{"x": 0.25}, {"x": 0.5}]) == [
        {"a": 0.25, "b": 0.75}, {"a": 0.5, "b": 0.5}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("score_body", "fragments"),
    [
        ("data$x[1]", ["returned 1 values for 3 rows"]),
        ("function(x) x", ["class 'function'"]),
        ("list(1, 2)", ["class 'list'"]),
        ("data.frame(a = 1:2)", ["column 'a' with 2 values for 3 rows"]),
        ("complex(real = data$x, imaginary = 1)", ["CPLXSXP"]),
        ('stop("no scores today")', ["score() failed: no scores today", "no scores today"]),
    ],
    ids=["short-vector", "function", "unnamed-list", "short-column", "complex", "stop"],
)
def test_unusable_results_are_model_errors(
    tmp_path: Path, score_body: str, fragments: list[str]
) -> None:
    model = bundle_with_score(tmp_path, score_body)
    with pytest.raises(ModelError) as caught:
        score_rows(model, [{"x": 1}, {"x": 2}, {"x": 3}])
    for fragment in fragments:
        assert fragment in caught.value.message


def test_a_model_error_leaves_the_model_usable(tmp_path: Path) -> None:
    model = bundle_with_score(tmp_path, 'if (any(data$x < 0)) stop("negative") else data$x')
    with pytest.raises(ModelError):
        score_rows(model, [{"x": -1}])
    assert score_rows(model, [{"x": 4}]) == [4.0]


def test_zero_rows_give_no_predictions(tmp_path: Path) -> None:
    model = bundle_with_score(tmp_path, 'stop("must not be called")')
    assert score_rows(model, []) == []


def test_inputs_arrive_in_r_with_their_types(tmp_path: Path) -> None:
    # score() reports the class of each column it received, and the factor levels.
    import rpy2.rinterface as ri

    ri.baseenv["eval"](
        ri.parse(
            f"saveRDS(data.frame(n = numeric(), i = integer(), b = logical(), s = character(),"
            f" f = factor(character(), levels = c('lo', 'hi')),"
            f" o = factor(character(), levels = c('s', 'm', 'l'), ordered = TRUE)),"
            f" '{tmp_path / 'ptype.rds'}')"
        )
    )
    model = bundle_with_score(
        tmp_path,
        "data.frame(what = vapply(data, function(col) paste(class(col), collapse = '/'), ''),"
        " levels = vapply(data, function(col) paste(levels(col), collapse = ','), ''))",
    )
    assert model.prototype == Prototype(
        (
            Column("n", "numeric"),
            Column("i", "integer"),
            Column("b", "logical"),
            Column("s", "character"),
            Column("f", "factor", ("lo", "hi")),
            Column("o", "ordered", ("s", "m", "l")),
        ),
        "ptype.rds",
    )
    rows = [
        {"n": 1.5, "i": 2, "b": True, "s": "x", "f": "hi", "o": "m"},
        {"n": None, "i": None, "b": None, "s": None, "f": None, "o": "l"},
        {"n": 3, "i": 4, "b": False, "s": "y", "f": "lo", "o": "s"},
        {"n": 0, "i": 0, "b": False, "s": "", "f": "lo", "o": "s"},
        {"n": 0, "i": 0, "b": False, "s": "", "f": "lo", "o": "s"},
        {"n": 0, "i": 0, "b": False, "s": "", "f": "lo", "o": "s"},
    ]
    kinds = score_rows(model, rows)
    assert [row["what"] for row in kinds] == [
        "numeric", "integer", "logical", "character", "factor", "ordered/factor"
    ]  # fmt: skip
    assert kinds[4]["levels"] == "lo,hi"
    assert kinds[5]["levels"] == "s,m,l"


def test_na_inputs_reach_r_as_na(tmp_path: Path) -> None:
    model = bundle_with_score(tmp_path, "is.na(data$x)")
    assert score_rows(model, [{"x": None}, {"x": 1.0}]) == [True, False]


@pytest.mark.parametrize(
    ("case", "columns"),
    [
        ("lm", [Column("wt", "numeric"), Column("hp", "numeric"), Column("qsec", "numeric")]),
        ("glm-factors", [Column("wool", "factor", ("A", "B")),
                         Column("tension", "factor", ("L", "M", "H"))]),
        ("rpart-class", [Column(name, "numeric") for name in
                         ("Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width")]),
        ("gbm-ntrees", [Column("wt", "numeric"), Column("hp", "numeric"),
                        Column("am", "factor", ("auto", "manual"))]),
        ("rf-prob", [Column(name, "numeric") for name in
                     ("Sepal.Length", "Sepal.Width", "Petal.Length", "Petal.Width")]),
        ("glmnet-matrix", []),  # no terms recorded: inputs pass through
    ],
)  # fmt: skip
def test_prototype_from_the_models_terms(
    test_bundles: Path, case: str, columns: list[Column]
) -> None:
    model = load_model(read_bundle(test_bundles / case))
    assert list(model.prototype.columns) == columns
    assert model.prototype.source == ("terms" if columns else "none")


def test_expression_inputs_pass_through(tmp_path: Path) -> None:
    import rpy2.rinterface as ri

    ri.baseenv["eval"](
        ri.parse(
            f"saveRDS(lm(mpg ~ log(hp) + factor(cyl), data = mtcars), '{tmp_path / 'model.rds'}')"
        )
    )
    model = load_model(read_bundle(tmp_path))
    # Used only inside expressions: the JSON values decide their type.
    assert list(model.prototype.columns) == [Column("hp", "any"), Column("cyl", "any")]
    assert len(score_rows(model, [{"hp": 110, "cyl": 6}])) == 1


@pytest.mark.parametrize(
    ("case", "packages"),
    [("rpart-class", ["rpart"]), ("rf-prob", ["randomForest"]), ("gbm-ntrees", ["gbm"]),
     ("lm", [])],
)  # fmt: skip
def test_the_models_package_is_attached_in_a_fresh_r(
    test_bundles: Path, case: str, packages: list[str]
) -> None:
    # A fresh process: this one's R has attached packages for earlier tests.
    program = (
        "import sys; from rscore.r_scorer.bundle import read_bundle; "
        "from rscore.r_scorer.rmodel import load_model; "
        "print(','.join(load_model(read_bundle(sys.argv[1])).packages))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(test_bundles / case)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    found = [name for name in result.stdout.strip().split(",") if name]
    assert found == packages


def test_score_r_init_and_score_must_be_functions(tmp_path: Path) -> None:
    (tmp_path / "score.R").write_text("init <- 42\n")
    with pytest.raises(BundleError, match="'init' must be a function"):
        load_model(read_bundle(tmp_path))
