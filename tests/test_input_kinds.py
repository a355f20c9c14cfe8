"""Dates, date-times, ordered factors, logicals and integers as a model was fitted.

The coercion of JSON values to each kind is a table (pure Python); the prototypes are
read by real R from models that Rscript fitted and saved with saveRDS only, and their
answers compared with R's own predict() on the same rows.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import assert_same_predictions

from rscore.r_scorer.bundle import read_bundle
from rscore.r_scorer.errors import SchemaMismatch
from rscore.r_scorer.payload import Frame, parse_body
from rscore.r_scorer.prototype import DATE, DATETIME, Column, Prototype, coerce
from rscore.r_scorer.rmodel import load_model

pytestmark = pytest.mark.real_r  # markers: pyproject.toml


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (DATE, "1970-01-01", 0.0),
        (DATE, "2024-05-31", 19874.0),
        (DATE, "1969-12-31", -1.0),
        (DATETIME, "1970-01-01T00:00:00Z", 0.0),
        (DATETIME, "1970-01-01T01:00:00+01:00", 0.0),
        (DATETIME, "2024-05-31T12:30:00", 1717158600.0),  # no offset: UTC
        (DATETIME, "2024-05-31T12:30:00.250Z", 1717158600.25),
        (DATETIME, "2024-05-31", 1717113600.0),  # a date alone: its midnight, UTC
        (DATE, None, None),
        (DATETIME, None, None),
    ],
)
def test_iso_8601_strings_become_what_r_holds(kind: str, value: Any, expected: Any) -> None:
    frame = coerce(Frame({"t": [value]}, 1), Prototype((Column("t", kind),), "terms"))
    assert frame.columns[0].values == [expected]


@pytest.mark.parametrize(
    ("kind", "value", "shown"),
    [
        (DATE, "2024-13-01", "string '2024-13-01'"),
        (DATE, "31/05/2024", "string '31/05/2024'"),
        (DATE, "2024-05-31T10:00:00", "string '2024-05-31T10:00:00'"),
        (DATE, 19874, "number 19874"),
        (DATETIME, "yesterday", "string 'yesterday'"),
        (DATETIME, 1717158600, "number 1717158600"),
        (DATETIME, True, "boolean"),
    ],
)
def test_a_wrong_date_or_date_time_names_the_column_and_row(
    kind: str, value: Any, shown: str
) -> None:
    prototype = Prototype((Column("when", kind),), "terms")
    with pytest.raises(SchemaMismatch) as raised:
        coerce(Frame({"when": [None, value]}, 2), prototype)
    message = raised.value.message
    assert message.startswith("column 'when' must be an ISO 8601 date")
    assert f"row 1 has {shown}" in message


# --- models fitted by Rscript --------------------------------------------------------

BUILD = r"""
set.seed(1)
n <- 60
d <- data.frame(
  day = as.Date("2024-01-01") + sample(0:365, n, TRUE),
  at = as.POSIXct("2024-01-01", tz = "UTC") + runif(n, 0, 3e7),
  size = factor(sample(c("S", "M", "L"), n, TRUE), levels = c("S", "M", "L"), ordered = TRUE),
  flag = runif(n) > 0.5,
  count = sample(1:9, n, TRUE)
)
d$y <- as.numeric(d$day) / 1000 + as.numeric(d$at) / 1e8 + as.integer(d$size) + d$flag +
  d$count + rnorm(n)
fit <- lm(y ~ day + at + size + flag + count, data = d)
saveRDS(fit, "model.rds")
rows <- d[1:5, c("day", "at", "size", "flag", "count")]
body <- data.frame(day = format(rows$day), at = format(rows$at, "%Y-%m-%dT%H:%M:%OS6Z"),
                   size = as.character(rows$size), flag = rows$flag, count = rows$count)
writeLines(jsonlite::toJSON(list(rows = body, expected = unname(predict(fit, newdata = rows))),
                            digits = NA, dataframe = "rows", auto_unbox = TRUE), "../case.json")
"""


@pytest.fixture(scope="module")
def typed_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("typed") / "typed-lm"
    folder.mkdir()
    subprocess.run(
        ["Rscript", "-e", BUILD], cwd=folder, check=True, capture_output=True, timeout=120
    )
    return folder


def test_the_prototype_has_each_input_as_the_model_was_fitted(typed_lm: Path) -> None:
    model = load_model(read_bundle(typed_lm))
    assert list(model.prototype.columns) == [
        Column("day", "date"),
        Column("at", "datetime"),
        Column("size", "ordered", ("S", "M", "L")),
        Column("flag", "logical"),
        Column("count", "integer"),
    ]


def test_dates_date_times_and_kinds_score_as_r_does(typed_lm: Path) -> None:
    case = json.loads((typed_lm.parent / "case.json").read_text())  # beside the bundle
    model = load_model(read_bundle(typed_lm))
    body = orjson.dumps({"dataframe_records": case["rows"]})
    frame = coerce(parse_body(body, model.prototype.known), model.prototype)
    assert_same_predictions(model.score(frame).predictions, case["expected"])


def test_a_fraction_for_an_integer_input_names_the_column(typed_lm: Path) -> None:
    model = load_model(read_bundle(typed_lm))
    row = {"day": "2024-02-01", "at": "2024-02-01T00:00:00Z", "size": "M", "flag": True}
    body = orjson.dumps({"data": [{**row, "count": 2.5}]})
    with pytest.raises(SchemaMismatch, match=r"column 'count' must be a whole number"):
        coerce(parse_body(body, model.prototype.known), model.prototype)


def test_a_ptype_with_date_and_date_time_columns_reaches_r_with_their_classes(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    subprocess.run(
        ["Rscript", "-e", "saveRDS(data.frame(d = Sys.Date()[0], t = Sys.time()[0]), 'ptype.rds')"],
        cwd=folder, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (folder / "score.R").write_text(
        "init <- function(model_dir) list()\n"
        "score <- function(state, data) data.frame(\n"
        "  d = paste(class(data$d), collapse = '/'), d_text = format(data$d),\n"
        "  t = paste(class(data$t), collapse = '/'),\n"
        "  t_text = format(data$t, '%Y-%m-%d %H:%M:%S', tz = 'UTC'))\n"
    )
    model = load_model(read_bundle(folder))
    assert list(model.prototype.columns) == [Column("d", "date"), Column("t", "datetime")]
    body = orjson.dumps({"data": [{"d": "2024-02-29", "t": "2024-02-29T23:30:00-01:00"}]})
    frame = coerce(parse_body(body, model.prototype.known), model.prototype)
    assert model.score(frame).predictions == [
        {"d": "Date", "d_text": "2024-02-29", "t": "POSIXct/POSIXt",
         "t_text": "2024-03-01 00:30:00"}
    ]  # fmt: skip
