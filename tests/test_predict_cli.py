"""`rscore predict` end to end: a fresh R per call, R's own answers as the oracle.

Each case was fitted and predicted by R itself in tests/fixtures/build_bundles.R; none
of the bundles calls library(), so these also show rscore finding the model's package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_same_predictions

pytestmark = [pytest.mark.real_r, pytest.mark.e2e]  # markers: pyproject.toml

RSCORE = [sys.executable, "-m", "rscore.cli"]

SCORING_CASES = [
    "lm",  # NA input -> null output
    "glm-factors",  # factor inputs, [predict] type = "response", dataframe_split
    "rf-prob",  # randomForest probabilities from score.R returning a data.frame, "data"
    "rpart-class",  # rpart class labels
    "gbm-ntrees",  # gbm needing "n.trees" from rscore.toml
    "ptype",  # ptype.rds with integer, logical and factor inputs
    "init-list",  # no model.rds: init() state, a named list of columns out
    "glmnet-matrix",  # a matrix out, keyed by column name
]


def run_predict(bundle: Path, body: str | None = None, input_path: Path | None = None):
    args = [*RSCORE, "predict", str(bundle)]
    if input_path is not None:
        args.append(str(input_path))
    return subprocess.run(
        args, input=body, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("case", SCORING_CASES)
def test_predictions_equal_rs_own(test_bundles: Path, case: str) -> None:
    bundle = test_bundles / case
    result = run_predict(bundle, input_path=bundle / "request.json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)  # stdout is nothing but the JSON answer
    expected = json.loads((bundle / "expected.json").read_text())
    assert_same_predictions(output["predictions"], expected)


def test_input_from_stdin(example_bundles: Path) -> None:
    body = '{"data": [{"wt": 2.62, "hp": 110, "qsec": 16.46}]}'
    result = run_predict(example_bundles / "mtcars-lm", body=body)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 1


def test_three_body_formats_agree(example_bundles: Path) -> None:
    rows = [{"wt": 2.62, "hp": 110, "qsec": 16.46}, {"wt": 3.44, "hp": 175, "qsec": 17.02}]
    bodies = [
        {"dataframe_records": rows},
        {"data": rows},
        {
            "dataframe_split": {
                "columns": ["wt", "hp", "qsec"],
                "data": [[r["wt"], r["hp"], r["qsec"]] for r in rows],
            }
        },
    ]
    answers = []
    for body in bodies:
        result = run_predict(example_bundles / "mtcars-lm", body=json.dumps(body))
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout)["predictions"])
    assert answers[0] == answers[1] == answers[2]


def error_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    last_line = result.stderr.strip().splitlines()[-1]
    return json.loads(last_line)["error"]


def test_score_r_error_reaches_the_caller(test_bundles: Path) -> None:
    bundle = test_bundles / "score-error"
    error = error_of(run_predict(bundle, input_path=bundle / "request.json"))
    assert error["code"] == "model_error"
    assert "deliberate failure on 2 rows" in error["message"]


@pytest.mark.parametrize(
    ("bundle", "fragments"),
    [
        ("bad-empty", ["neither model.rds nor score.R"]),
        ("bad-syntax", ["score.R", "unexpected symbol", "predict(state data"]),
        ("bad-init-fails", ["score.R: init() failed", "cannot reach the feature store"]),
        ("bad-no-predict", ["predict() method", "'mystery_model'"]),
        ("bad-missing-package", ["notInstalledPkg", "not installed"]),
        ("bad-ptype-not-frame", ["ptype.rds", "data.frame"]),
    ],
)
def test_bad_bundles_fail_at_load_naming_the_cause(
    test_bundles: Path, bundle: str, fragments: list[str]
) -> None:
    error = error_of(run_predict(test_bundles / bundle, body='{"data": [{"wt": 1}]}'))
    assert error["code"] == "bundle_error"
    for fragment in fragments:
        assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "code", "fragments"),
    [
        ('{"data": [{"wool": "A"}]}', "schema_mismatch", ["missing column", "'tension'"]),
        (
            '{"data": [{"wool": "C", "tension": "L"}]}',
            "schema_mismatch",
            ["'wool'", "unknown level 'C'", "'A', 'B'"],
        ),
        (
            '{"data": [{"wool": "A", "tension": true}]}',
            "schema_mismatch",
            ["'tension'", "row 0"],
        ),
        ("{not json", "bad_request", ["not valid JSON"]),
        ('{"rows": []}', "bad_request", ["dataframe_records"]),
    ],
    ids=["missing-column", "unknown-level", "wrong-type", "not-json", "wrong-shape"],
)
def test_request_errors_name_the_column(
    test_bundles: Path, body: str, code: str, fragments: list[str]
) -> None:
    error = error_of(run_predict(test_bundles / "glm-factors", body=body))
    assert error["code"] == code
    for fragment in fragments:
        assert fragment in error["message"]
