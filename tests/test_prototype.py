"""prototype.coerce: request columns coerced to the model's input prototype."""

import pytest

from rscore.r_scorer.errors import SchemaMismatch
from rscore.r_scorer.payload import Frame, frame_from_document, frame_from_records
from rscore.r_scorer.prototype import (
    ANY,
    CHARACTER,
    FACTOR,
    INTEGER,
    KINDS,
    LOGICAL,
    NUMERIC,
    ORDERED,
    R_INT_MAX,
    Column,
    Prototype,
    TypedColumn,
    TypedFrame,
    coerce,
)

LEVELS = ("setosa", "versicolor", "virginica")


def one_column(kind, values, levels=()):
    """Coerce a single column named 'x' and return the TypedColumn."""
    frame = Frame({"x": list(values)}, len(values))
    typed = coerce(frame, Prototype((Column("x", kind, levels),), "ptype.rds"))
    assert typed.nrows == len(values)
    assert len(typed.columns) == 1
    return typed.columns[0]


def test_kinds_are_the_r_vector_kinds():
    assert KINDS == (
        "numeric", "integer", "logical", "character", "factor", "ordered", "date", "datetime",
        "any",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "levels", "values", "expected"),
    [
        (NUMERIC, (), [1.5, 2, -3, 0, None], [1.5, 2.0, -3.0, 0.0, None]),
        (NUMERIC, (), [1e308, -1e-300], [1e308, -1e-300]),
        (INTEGER, (), [1, 2.0, -7, None, 0], [1, 2, -7, None, 0]),
        (INTEGER, (), [R_INT_MAX, -R_INT_MAX], [R_INT_MAX, -R_INT_MAX]),
        (INTEGER, (), [float(R_INT_MAX), -0.0], [R_INT_MAX, 0]),
        (LOGICAL, (), [True, False, None], [True, False, None]),
        (CHARACTER, (), ["a", "", None, "1.5"], ["a", "", None, "1.5"]),
        (FACTOR, LEVELS, ["virginica", "setosa", None, "versicolor"], [3, 1, None, 2]),
        (ORDERED, ("low", "mid", "high"), ["high", "low", "mid", None], [3, 1, 2, None]),
        (FACTOR, ("4", "6", "8"), [4, 6.0, "8", None], [1, 2, 3, None]),
        (FACTOR, ("-1", "0", "1"), [-1, 0, -0.0, 1.0], [1, 2, 2, 3]),
        (ORDERED, ("1", "2", "3"), [3, 2.0, "1"], [3, 2, 1]),
        (NUMERIC, (), [None, None], [None, None]),
        (FACTOR, LEVELS, [None], [None]),
        (NUMERIC, (), [], []),
    ],
    ids=[
        "numeric",
        "numeric-extremes",
        "integer",
        "integer-range-edges",
        "integer-whole-floats",
        "logical",
        "character",
        "factor-labels-to-codes",
        "ordered-labels-to-codes",
        "factor-whole-numbers-as-labels",
        "factor-negative-and-zero",
        "ordered-whole-numbers",
        "numeric-all-null",
        "factor-all-null",
        "no-rows",
    ],
)
def test_coerce_by_kind(kind, levels, values, expected):
    column = one_column(kind, values, levels)
    assert column == TypedColumn("x", kind, expected)
    for got, want in zip(column.values, expected, strict=True):
        assert type(got) is type(want)


def test_numeric_values_become_floats_and_integer_values_ints():
    assert [type(v) for v in one_column(NUMERIC, [1, 2.5]).values] == [float, float]
    assert [type(v) for v in one_column(INTEGER, [1, 2.0]).values] == [int, int]


@pytest.mark.parametrize(
    ("kind", "value", "row", "fragments"),
    [
        (NUMERIC, True, 0, ["must be a number", "row 0 has boolean True"]),
        (NUMERIC, False, 0, ["must be a number", "row 0 has boolean False"]),
        (NUMERIC, "1.5", 0, ["must be a number", "row 0 has string '1.5'"]),
        (NUMERIC, [1], 0, ["must be a number", "row 0 has array"]),
        (NUMERIC, {"v": 1}, 0, ["must be a number", "row 0 has object"]),
        (INTEGER, 1.5, 0, ["must be a whole number within +/-2147483647", "row 0 has number 1.5"]),
        (INTEGER, True, 0, ["must be a whole number", "row 0 has boolean True"]),
        (INTEGER, "3", 0, ["must be a whole number", "row 0 has string '3'"]),
        (INTEGER, R_INT_MAX + 1, 0, ["must be a whole number", "row 0 has number 2147483648"]),
        (INTEGER, -R_INT_MAX - 1, 0, ["row 0 has number -2147483648"]),
        (INTEGER, 1e300, 0, ["must be a whole number", "row 0 has number 1e+300"]),
        (LOGICAL, 1, 0, ["must be true or false", "row 0 has number 1"]),
        (LOGICAL, 0, 0, ["must be true or false", "row 0 has number 0"]),
        (LOGICAL, "true", 0, ["must be true or false", "row 0 has string 'true'"]),
        (CHARACTER, 5, 0, ["must be a string", "row 0 has number 5"]),
        (CHARACTER, True, 0, ["must be a string", "row 0 has boolean True"]),
        (
            FACTOR,
            True,
            0,
            ["must be a factor level (a string, or a whole number)", "row 0 has boolean True"],
        ),
        (
            FACTOR,
            4.5,
            0,
            ["must be a factor level (a string, or a whole number)", "row 0 has number 4.5"],
        ),
        (
            ORDERED,
            [1],
            0,
            ["must be a factor level (a string, or a whole number)", "row 0 has array"],
        ),
    ],
    ids=[
        "numeric-true",
        "numeric-false",
        "numeric-string",
        "numeric-array",
        "numeric-object",
        "integer-fraction",
        "integer-bool",
        "integer-string",
        "integer-above-range",
        "integer-na-integer",
        "integer-huge-float",
        "logical-one",
        "logical-zero",
        "logical-string",
        "character-number",
        "character-bool",
        "factor-bool",
        "factor-fraction",
        "ordered-array",
    ],
)
def test_wrong_type_names_column_and_row(kind, value, row, fragments):
    levels = ("1", "4", "true") if kind in (FACTOR, ORDERED) else ()
    with pytest.raises(SchemaMismatch) as caught:
        one_column(kind, [value], levels)
    message = caught.value.message
    assert caught.value.code == "schema_mismatch"
    assert message.startswith("column 'x' must be ")
    assert "(or null)" in message
    for fragment in fragments:
        assert fragment in message


def test_wrong_type_error_names_the_right_row():
    with pytest.raises(SchemaMismatch, match=r"column 'x' must be a number .*row 3 has string 'a'"):
        one_column(NUMERIC, [1, None, 2.5, "a", "b"])


@pytest.mark.parametrize("kind", [NUMERIC, INTEGER], ids=["numeric", "integer"])
@pytest.mark.parametrize("value", [True, False], ids=["true", "false"])
def test_bools_are_never_numbers(kind, value):
    with pytest.raises(SchemaMismatch, match=f"row 1 has boolean {value}$"):
        one_column(kind, [1, value])


@pytest.mark.parametrize(
    ("levels", "value", "fragments"),
    [
        (LEVELS, "daisy", ["column 'x': unknown level 'daisy'", "'setosa', 'versicolor'"]),
        (LEVELS, "Setosa", ["unknown level 'Setosa'"]),
        (("4", "6", "8"), 5, ["unknown level '5'", "the model knows '4', '6', '8'"]),
        (("4", "6", "8"), 5.0, ["unknown level '5'"]),
        (("4.0",), 4.0, ["unknown level '4'", "the model knows '4.0'"]),
        (("a",), "", ["unknown level ''"]),
    ],
    ids=["label", "case-sensitive", "int", "whole-float", "no-4.0-label", "empty-string"],
)
def test_unknown_level_names_column_and_value(levels, value, fragments):
    with pytest.raises(SchemaMismatch) as caught:
        one_column(FACTOR, ["a" if "a" in levels else levels[0], value], levels)
    for fragment in fragments:
        assert fragment in caught.value.message


def test_unknown_level_message_lists_the_known_levels():
    with pytest.raises(SchemaMismatch) as caught:
        one_column(ORDERED, ["medium"], ("low", "high"))
    assert (
        caught.value.message == "column 'x': unknown level 'medium'; the model knows 'low', 'high'"
    )


def test_unknown_level_message_shows_at_most_ten_levels():
    levels = tuple(f"l{i}" for i in range(13))
    with pytest.raises(SchemaMismatch) as caught:
        one_column(FACTOR, ["zz"], levels)
    message = caught.value.message
    assert "'l9' and 3 more" in message
    assert "'l10'" not in message


def test_unknown_level_message_with_exactly_ten_levels_has_no_more():
    levels = tuple(f"l{i}" for i in range(10))
    with pytest.raises(SchemaMismatch) as caught:
        one_column(FACTOR, ["zz"], levels)
    assert caught.value.message.endswith("'l9'")
    assert "more" not in caught.value.message


def test_column_computes_one_based_level_codes():
    column = Column("f", FACTOR, ("b", "a", "c"))
    assert column.level_codes == {"b": 1, "a": 2, "c": 3}


def test_column_rejects_unknown_kind():
    with pytest.raises(ValueError, match="column 'x': unknown kind 'complex'"):
        Column("x", "complex")


PROTOTYPE = Prototype(
    (
        Column("wt", NUMERIC),
        Column("cyl", FACTOR, ("4", "6", "8")),
        Column("am", LOGICAL),
    ),
    "terms",
)


def test_coerce_uses_prototype_order_and_drops_extra_columns():
    frame = frame_from_records(
        [
            {"extra": "zzz", "am": True, "cyl": 6, "wt": 2.5},
            {"am": None, "cyl": "8", "wt": 3, "other": [1]},
        ]
    )
    typed = coerce(frame, PROTOTYPE)
    assert typed == TypedFrame(
        (
            TypedColumn("wt", NUMERIC, [2.5, 3.0]),
            TypedColumn("cyl", FACTOR, [2, 3]),
            TypedColumn("am", LOGICAL, [True, None]),
        ),
        2,
    )


@pytest.mark.parametrize(
    ("present", "message"),
    [
        (
            {"wt": [1.0], "am": [True]},
            "missing column 'cyl'; the model needs 'wt', 'cyl', 'am'",
        ),
        (
            {"cyl": ["4"]},
            "missing columns 'wt', 'am'; the model needs 'wt', 'cyl', 'am'",
        ),
        (
            {},
            "missing columns 'wt', 'cyl', 'am'; the model needs 'wt', 'cyl', 'am'",
        ),
        (
            {"WT": [1.0], "cyl": ["4"], "am": [True]},
            "missing column 'wt'; the model needs 'wt', 'cyl', 'am'",
        ),
    ],
    ids=["one", "two", "all", "case-sensitive"],
)
def test_missing_columns_are_listed(present, message):
    frame = Frame(present, 1)  # "all": one row with no columns, like [{}] (zero rows are valid)
    with pytest.raises(SchemaMismatch) as caught:
        coerce(frame, PROTOTYPE)
    assert caught.value.message == message


def test_any_column_in_a_prototype_is_inferred():
    prototype = Prototype((Column("a", ANY), Column("b", NUMERIC)), "terms")
    frame = Frame({"b": [1], "a": ["x"]}, 1)
    typed = coerce(frame, prototype)
    assert typed.columns == (TypedColumn("a", CHARACTER, ["x"]), TypedColumn("b", NUMERIC, [1.0]))


def test_any_column_in_a_prototype_rejects_mixed_types():
    prototype = Prototype((Column("a", ANY),), "terms")
    with pytest.raises(SchemaMismatch, match="column 'a' mixes 'number', 'string' values"):
        coerce(Frame({"a": [1, "x"]}, 2), prototype)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"n": [1, 2.5, None]}, [TypedColumn("n", NUMERIC, [1.0, 2.5, None])]),
        ({"b": [True, None, False]}, [TypedColumn("b", LOGICAL, [True, None, False])]),
        ({"s": ["a", None, "c"]}, [TypedColumn("s", CHARACTER, ["a", None, "c"])]),
        ({"z": [None, None, None]}, [TypedColumn("z", LOGICAL, [None, None, None])]),
        (
            {"s": ["a", "b", "c"], "n": [3, 2, 1]},
            [
                TypedColumn("s", CHARACTER, ["a", "b", "c"]),
                TypedColumn("n", NUMERIC, [3.0, 2.0, 1.0]),
            ],
        ),
    ],
    ids=["numbers-to-float", "booleans", "strings", "all-null-is-logical", "frame-order-kept"],
)
def test_pass_through_infers_kinds(columns, expected):
    typed = coerce(Frame(columns, 3), Prototype())
    assert typed == TypedFrame(tuple(expected), 3)


def test_pass_through_numbers_are_floats():
    typed = coerce(Frame({"n": [1, 2]}, 2), Prototype())
    assert [type(v) for v in typed.columns[0].values] == [float, float]


def test_pass_through_of_an_empty_frame():
    assert coerce(Frame({}, 0), Prototype()) == TypedFrame((), 0)
    assert coerce(Frame({"a": []}, 0), Prototype()) == TypedFrame(
        (TypedColumn("a", LOGICAL, []),), 0
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1, "a"], "column 'm' mixes 'number', 'string' values"),
        ([True, 1], "column 'm' mixes 'boolean', 'number' values"),
        (["a", None, False], "column 'm' mixes 'boolean', 'string' values"),
        ([1, "a", True], "column 'm' mixes 'boolean', 'number', 'string' values"),
        ([[1], [2]], "column 'm' holds array values; expected scalars"),
        ([{"k": 1}, None], "column 'm' holds object values; expected scalars"),
        ([[1], 1], "column 'm' mixes 'array', 'number' values"),
    ],
    ids=[
        "number-string",
        "boolean-number",
        "boolean-string-with-null",
        "three-types",
        "arrays",
        "objects",
        "array-number",
    ],
)
def test_pass_through_rejects_mixed_and_nested(values, message):
    with pytest.raises(SchemaMismatch) as caught:
        coerce(Frame({"m": values}, len(values)), Prototype())
    assert caught.value.message == message


def test_empty_prototype_is_unchecked():
    assert Prototype().checked is False
    assert Prototype().source == "none"
    assert PROTOTYPE.checked is True


@pytest.mark.parametrize(
    "prototype",
    [
        Prototype(),
        PROTOTYPE,
        Prototype(
            (
                Column("x", INTEGER),
                Column("s", CHARACTER),
                Column("o", ORDERED, ("lo", "hi")),
                Column("a", ANY),
                Column("f", FACTOR, ()),
            ),
            "ptype.rds",
        ),
    ],
    ids=["empty", "terms", "every-kind"],
)
def test_prototype_json_round_trip(prototype):
    described = prototype.to_json()
    rebuilt = Prototype.from_json(described)
    assert rebuilt == prototype
    assert rebuilt.to_json() == described
    for column in rebuilt.columns:
        assert column.level_codes == {
            level: code for code, level in enumerate(column.levels, start=1)
        }


def test_prototype_to_json_shape():
    assert PROTOTYPE.to_json() == {
        "source": "terms",
        "columns": [
            {"name": "wt", "kind": "numeric"},
            {"name": "cyl", "kind": "factor", "levels": ["4", "6", "8"]},
            {"name": "am", "kind": "logical"},
        ],
    }


def test_prototype_from_json_defaults():
    assert Prototype.from_json({}) == Prototype((), "none")
    rebuilt = Prototype.from_json({"columns": [{"name": "f", "kind": "factor", "levels": ["a"]}]})
    assert rebuilt.source == "none"
    assert rebuilt.columns[0].level_codes == {"a": 1}


def test_prototype_from_json_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind 'double'"):
        Prototype.from_json({"columns": [{"name": "x", "kind": "double"}]})


# --- zero rows: one rule in every body format ---------------------------------------------

CHECKED = Prototype(
    (Column("wt", NUMERIC), Column("cyl", INTEGER), Column("f", FACTOR, ("a", "b"))), "ptype.rds"
)
NO_ROWS = TypedFrame(
    (TypedColumn("wt", NUMERIC, []), TypedColumn("cyl", INTEGER, []), TypedColumn("f", FACTOR, [])),
    0,
)


@pytest.mark.parametrize(
    "document",
    [
        {"dataframe_records": []},
        {"data": []},
        {"dataframe_split": {"columns": [], "data": []}},
        {"dataframe_split": {"columns": ["wt", "cyl", "f"], "data": []}},
        {"dataframe_split": {"columns": ["f", "wt"], "data": []}},
        {"dataframe_split": {"columns": ["other"], "data": []}},
    ],
    ids=[
        "records",
        "data",
        "split-no-columns",
        "split-every-column",
        "split-some-columns",
        "split-other-columns",
    ],
)
def test_zero_rows_are_valid_in_every_format(document):
    assert coerce(frame_from_document(document), CHECKED) == NO_ROWS


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"dataframe_records": []}, TypedFrame((), 0)),
        ({"data": []}, TypedFrame((), 0)),
        ({"dataframe_split": {"columns": [], "data": []}}, TypedFrame((), 0)),
        (
            {"dataframe_split": {"columns": ["a"], "data": []}},
            TypedFrame((TypedColumn("a", LOGICAL, []),), 0),
        ),
    ],
    ids=["records", "data", "split-no-columns", "split-a-column"],
)
def test_zero_rows_pass_through_an_unchecked_model(document, expected):
    assert coerce(frame_from_document(document), Prototype()) == expected


def test_rows_without_the_models_columns_are_still_a_missing_column():
    for document in (
        {"dataframe_records": [{}]},
        {"data": [{"wt": 1.0}]},
        {"dataframe_split": {"columns": [], "data": [[]]}},
    ):
        with pytest.raises(SchemaMismatch, match="missing column"):
            coerce(frame_from_document(document), CHECKED)
