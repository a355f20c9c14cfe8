"""A large `dataframe_split` body of numbers read straight into columns
(rscore.r_scorer.numeric_split): exactly the general path's frame when it reads a body, and
None (the general path runs, with its error message) for anything it does not cover or
that is not valid JSON; over many generated bodies (hostile ones among them), always one
or the other, never a body the general path refuses. No R.
"""

from __future__ import annotations

import json
import tracemalloc
from random import Random
from typing import Any

import numpy as np
import orjson
import pytest

from rscore.r_scorer import numeric_split as numeric_split_module
from rscore.r_scorer.errors import ScoringError
from rscore.r_scorer.numeric_split import MIN_BODY_BYTES, PIECE_VALUES, numeric_split
from rscore.r_scorer.payload import RequestLimits, parse_body, parse_json
from rscore.r_scorer.prototype import INTEGER, NUMERIC, Column, Prototype, TypedFrame, coerce

NAMES = ["a", "b", "c", "d"]
PROTOTYPE = Prototype(tuple(Column(name, NUMERIC) for name in NAMES), "terms")
LIMITS = RequestLimits()
ROWS = 3000  # ~70 KB: over MIN_BODY_BYTES


@pytest.fixture(autouse=True, params=[7, 1000, PIECE_VALUES], ids=lambda n: f"pieces-of-{n}")
def piece_values(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every test with the values read in pieces of 7 (a cut next to every bad value in
    turn), 1,000, and the default (one piece here)."""
    monkeypatch.setattr(numeric_split_module, "PIECE_VALUES", request.param)
    return int(request.param)


def values(rows: int = ROWS) -> list[list[Any]]:
    """Floats, whole numbers, exponents, negatives and nulls, as clients send them."""
    rng = np.random.default_rng(7)
    table: list[list[Any]] = []
    for index in range(rows):
        row: list[Any] = [float(x) for x in np.round(rng.normal(0, 100, 4), 3)]
        row[index % 4] = None if index % 11 == 0 else row[index % 4]
        row[(index + 1) % 4] = index if index % 5 == 0 else row[(index + 1) % 4]
        row[(index + 2) % 4] = 1.5e-7 * index if index % 7 == 0 else row[(index + 2) % 4]
        table.append(row)
    return table


def split_body(table: list[list[Any]], names: list[str] = NAMES, **dumps: Any) -> bytes:
    document = {"dataframe_split": {"columns": names, "data": table}}
    if dumps:
        return json.dumps(document, **dumps).encode()
    return orjson.dumps(document)


def general(body: bytes, prototype: Prototype = PROTOTYPE) -> TypedFrame:
    return coerce(parse_body(body, prototype.known, LIMITS), prototype)


def assert_same_frame(fast: TypedFrame, slow: TypedFrame) -> None:
    assert fast.nrows == slow.nrows
    assert [(c.name, c.kind) for c in fast.columns] == [(c.name, c.kind) for c in slow.columns]
    for mine, theirs in zip(fast.columns, slow.columns, strict=True):
        assert isinstance(mine.values, np.ndarray)
        assert mine.values.dtype == np.float64
        assert mine.values.flags.c_contiguous
        expected = np.array(theirs.values, dtype=np.float64)  # a list of ints: None -> NaN
        np.testing.assert_array_equal(mine.values, expected)  # NaN equals NaN here


@pytest.mark.parametrize(
    "dumps",
    [{}, {"separators": (", ", ": ")}, {"indent": 1}, {"separators": (",", ":")}],
    ids=["orjson", "spaces", "indented", "compact-json"],
)
def test_a_body_it_reads_gives_the_general_paths_frame(dumps: dict[str, Any]) -> None:
    body = split_body(values(), **dumps)
    assert len(body) >= MIN_BODY_BYTES
    read = numeric_split(body, PROTOTYPE, LIMITS)
    assert read is not None
    assert_same_frame(read.frame, general(body))


def test_columns_in_another_order_and_extra_ones_are_taken_as_coerce_takes_them() -> None:
    table = [[*row, 99.0] for row in values()]
    names = ["d", "c", "b", "a", "unused"]
    body = split_body(table, names)
    read = numeric_split(body, PROTOTYPE, LIMITS)
    assert read is not None
    assert [column.name for column in read.frame.columns] == NAMES  # prototype order
    assert_same_frame(read.frame, general(body))


def test_the_document_kept_for_data_collection_is_the_body() -> None:
    body = split_body(values())
    read = numeric_split(body, PROTOTYPE, LIMITS)
    assert read is not None
    assert orjson.dumps(read.document) == orjson.dumps(parse_json(body))


def test_without_data_collection_no_document_is_built() -> None:
    body = split_body(values(), indent=2)
    kept, bare = (
        numeric_split(body, PROTOTYPE, LIMITS, keep_document=keep) for keep in (True, False)
    )
    assert kept is not None
    assert bare is not None
    assert kept.document is not None
    assert bare.document is None
    assert_same_frame(bare.frame, kept.frame)


def test_the_document_of_a_pretty_printed_body_stays_on_one_line() -> None:
    """Data collection writes one document per line (JSON Lines)."""
    body = split_body(values(), indent=2).replace(b"\n", b"\r\n")
    read = numeric_split(body, PROTOTYPE, LIMITS)
    assert read is not None
    written = orjson.dumps(read.document)
    assert b"\n" not in written
    assert b"\r" not in written
    assert orjson.loads(written) == parse_json(body)


def test_an_integer_column_reads_as_the_same_whole_numbers() -> None:
    prototype = Prototype((Column("a", INTEGER), Column("b", NUMERIC)), "ptype.rds")
    table = [[None if i % 9 == 0 else i - 500, i / 4] for i in range(ROWS)]
    body = split_body(table, ["a", "b"])
    read = numeric_split(body, prototype, LIMITS)
    assert read is not None
    assert_same_frame(read.frame, general(body, prototype))
    assert read.frame.columns[0].kind == INTEGER


@pytest.mark.parametrize("bad", [2.5, 2**31, -(2**31)], ids=["fraction", "over", "under"])
def test_an_integer_column_it_cannot_hold_goes_to_the_general_path(bad: float) -> None:
    prototype = Prototype((Column("a", INTEGER), Column("b", NUMERIC)), "ptype.rds")
    table = [[i, 1.0] for i in range(ROWS)]
    table[1234][0] = bad
    body = split_body(table, ["a", "b"])
    assert numeric_split(body, prototype, LIMITS) is None
    with pytest.raises(ScoringError, match="row 1234"):
        general(body, prototype)


def mutated(old: bytes, new: bytes) -> bytes:
    """The body with one row's text changed (the row at index 1000)."""
    table = [[1.5, 2.0, -3.25, 4.0] for _ in range(ROWS)]
    table[1000] = [7.5, 8.5, 9.5, 10.5]
    body = split_body(table)
    assert body.count(old) == 1, old
    return body.replace(old, new)


ROW = b"[7.5,8.5,9.5,10.5]"

# Not JSON, or not rows of four numbers: refused here, and the general path says why.
REFUSED = {
    "empty value": ROW.replace(b"8.5,", b","),
    "empty first value": b"[,8.5,9.5,10.5]",
    "trailing comma": b"[7.5,8.5,9.5,10.5,]",
    "value after a row": ROW + b"3",
    "value before a row": b"3" + ROW,
    "no comma": b"[7.5,8.5 9.5,10.5]",
    "leading zero": b"[07.5,8.5,9.5,10.5]",
    "plus sign": b"[+7.5,8.5,9.5,10.5]",
    "bare fraction": b"[.5,8.5,9.5,10.5]",
    "bare point": b"[7.,8.5,9.5,10.5]",
    "bare exponent": b"[7e,8.5,9.5,10.5]",
    "double minus": b"[--7.5,8.5,9.5,10.5]",
    "inner minus": b"[7-5,8.5,9.5,10.5]",
    "nul": b"[nul,8.5,9.5,10.5]",
    "NaN": b"[NaN,8.5,9.5,10.5]",
    "Infinity": b"[Infinity,8.5,9.5,10.5]",
    "short row": b"[7.5,8.5,9.5]",
    "long row": b"[7.5,8.5,9.5,10.5,11.5]",
    "nested row": b"[[7.5],8.5,9.5,10.5]",
    "unclosed": b"[7.5,8.5,9.5,10.5",
}

# Valid bodies this does not read: the general path coerces them (or refuses the value).
NOT_MINE = {
    "a string": b'[7.5,"8.5",9.5,10.5]',
    "a boolean": b"[7.5,true,9.5,10.5]",
    "an object": b'[7.5,{"x":1},9.5,10.5]',
}


@pytest.mark.parametrize("new", list(REFUSED.values()), ids=list(REFUSED))
def test_a_bad_value_or_row_is_left_to_the_general_path_which_refuses_it(new: bytes) -> None:
    body = mutated(ROW, new)
    assert numeric_split(body, PROTOTYPE, LIMITS) is None
    with pytest.raises(ScoringError):
        general(body)


@pytest.mark.parametrize("new", list(NOT_MINE.values()), ids=list(NOT_MINE))
def test_a_value_that_is_not_a_number_is_left_to_the_general_path(new: bytes) -> None:
    body = mutated(ROW, new)
    assert numeric_split(body, PROTOTYPE, LIMITS) is None
    with pytest.raises(ScoringError, match="row 1000"):
        general(body)


@pytest.mark.parametrize(
    "new",
    [ROW, b"[null,-0,1E+2,123456789012345678901234567890]", REFUSED["empty value"]],
    ids=["read", "read-by-orjson", "refused"],
)
def test_a_bytearray_body_is_read_in_place_and_left_as_it_was(new: bytes) -> None:
    """The sidecar's body is a bytearray, read without a copy: the commas around each
    piece stand in for its brackets while it is read, and are put back, whether the
    body is read or refused."""
    body = mutated(ROW, new)
    lent = bytearray(body)
    read = numeric_split(lent, PROTOTYPE, LIMITS)
    assert lent == body
    if new is REFUSED["empty value"]:
        assert read is None
        return
    assert read is not None
    assert_same_frame(read.frame, general(body))
    assert orjson.loads(orjson.dumps(read.document)) == orjson.loads(body)


def test_null_and_exponents_are_read_as_json_reads_them() -> None:
    body = mutated(ROW, b"[null,-0,1E+2,-2.5e-3]")
    read = numeric_split(body, PROTOTYPE, LIMITS)
    assert read is not None
    assert_same_frame(read.frame, general(body))
    assert np.isnan(read.frame.columns[0].values[1000])


def document_body(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


def test_bodies_of_other_shapes_go_to_the_general_path() -> None:
    table = values()
    records = [dict(zip(NAMES, row, strict=True)) for row in table]
    split = {"columns": NAMES, "data": table}
    others = [
        document_body({"dataframe_records": records}),
        document_body({"data": records}),
        document_body({"dataframe_split": split, "data": records}),  # two formats: a 400
        document_body({"dataframe_split": {**split, "columns": ["a", "a", "c", "d"]}}),
        document_body({"dataframe_split": {**split, "columns": ["a", "b", "c"]}}),
        document_body({"dataframe_split": {"columns": NAMES}, "extra": table}),
        document_body({"dataframe_split": {"columns": [*NAMES, "x\x00"], "data": table}}),
        split_body(table)[:-1],  # cut short: not JSON
    ]
    for body in others:
        assert numeric_split(body, PROTOTYPE, LIMITS) is None


@pytest.mark.parametrize("key", ["dataframe_records", "data"])
def test_a_records_body_is_never_parsed_here(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The general path parses it: parsing it here first would cost as much again."""
    parsed: list[int] = []

    def loads(text: Any) -> Any:
        parsed.append(len(text))
        return orjson.loads(text)

    monkeypatch.setattr(numeric_split_module.orjson, "loads", loads)
    records = [dict(zip(NAMES, row, strict=True)) for row in values()]
    bodies = [
        document_body({key: records}),
        document_body({key: records, "x": [[1.0]]}),
        document_body({key: records, "note": "dataframe_split"}),  # mentions the key
    ]
    assert b'"dataframe_split"' in bodies[-1]
    for body in bodies:
        assert numeric_split(body, PROTOTYPE, LIMITS) is None
    assert parsed == []


def test_the_array_inside_a_string_is_not_taken_for_the_data() -> None:
    text = orjson.dumps(values()).decode()
    body = document_body(
        {"dataframe_split": {"columns": NAMES, "data": [[1.0, 2.0, 3.0, 4.0]], "note": text}}
    )
    assert numeric_split(body, PROTOTYPE, LIMITS) is None
    assert general(body).nrows == 1


def test_a_forged_marker_is_never_read() -> None:
    """Two `data` keys, the last one the marker's own text: JSON keeps the last, so the
    general path sees a string there; this path must not score the first."""
    head = split_body(values())[:-2]  # without the closing braces
    body = head + b',"data":"\\u0000rscore:data"}}'
    assert numeric_split(body, PROTOTYPE, LIMITS) is None
    with pytest.raises(ScoringError, match="list of rows"):
        general(body)


@pytest.mark.parametrize(
    "data",
    [b"[" * 200_000 + b"]", b"[" + b"[]," * 70_000 + b"[]]", b"[[" + b"1]" * 100_000 + b"]"],
    ids=["opening-brackets", "empty-rows", "closing-brackets"],
)
def test_a_body_of_brackets_costs_memory_in_proportion_to_its_size(data: bytes) -> None:
    """The shape is checked without building what `columns` times the brackets' count
    would take (10,000 columns and a million `[`: 10 GB)."""
    names = [f"c{i}" for i in range(2000)]
    prototype = Prototype(tuple(Column(name, NUMERIC) for name in names), "terms")
    body = b'{"dataframe_split":{"columns":' + orjson.dumps(names) + b',"data":' + data + b"}}"
    tracemalloc.start()
    try:
        assert numeric_split(body, prototype, LIMITS) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(body)


def test_a_missing_column_or_a_column_of_another_kind_is_left_to_the_general_path() -> None:
    body = split_body([row[:3] for row in values()], NAMES[:3])
    assert numeric_split(body, PROTOTYPE, LIMITS) is None
    with pytest.raises(ScoringError, match="missing column 'd'"):
        general(body)
    factor = Prototype((Column("a", "factor", ("1", "2")), *PROTOTYPE.columns[1:]), "terms")
    assert numeric_split(split_body(values()), factor, LIMITS) is None
    assert numeric_split(split_body(values()), Prototype(), LIMITS) is None  # unchecked


def test_small_bodies_and_the_row_limit_are_left_to_the_general_path() -> None:
    assert numeric_split(split_body(values(100)), PROTOTYPE, LIMITS) is None
    body = split_body(values())
    assert numeric_split(body, PROTOTYPE, RequestLimits(max_rows=ROWS - 1)) is None
    with pytest.raises(ScoringError, match="--max-rows"):
        coerce(parse_body(body, PROTOTYPE.known, RequestLimits(max_rows=ROWS - 1)), PROTOTYPE)


# --- the fast path against the general path, over many generated bodies --------------
#
# Every body either reads here to exactly the general path's frame (the general path
# accepting it), or gives None. Bodies are built from numbers as clients write them and
# from what a hostile or careless one may send, then mutated byte by byte.

FUZZ_CASES = 1500
_NUMBERS = [
    b"0", b"-0", b"-0.0", b"0.0", b"1", b"-1", b"7", b"42", b"2147483647", b"-2147483647",
    b"2147483648", b"-2147483648", b"9007199254740993", b"-9007199254740993",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809",
    b"18446744073709551615", b"18446744073709551616", b"123456789012345678901234567890",
    b"1.5", b"-2.25", b"3.0", b"0.1", b"1e5", b"1E5", b"1e+5", b"1E-5", b"-2.5e-3",
    b"2.5E+10", b"1e308", b"1.7976931348623157e308", b"-1.7976931348623157e308",
    b"5e-324", b"1e-400", b"-1e-400", b"4.9406564584124654e-324", b"0e0", b"0E-0",
    b"1.00000000000000000000001", b"0.30000000000000004", b"null",
]  # fmt: skip
_INFINITE = [b"1e309", b"1e400", b"-1e400", b"1.8e308"]  # JSON numbers orjson refuses
_BAD_TOKENS = [
    b"+1", b"01", b"-01", b".5", b"1.", b"-", b"1e", b"1e+", b"--1", b"1-2", b"1..2",
    b"1e5e5", b"0x10", b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nul", b"nulll",
    b"nullnull", b"lun", b"e5", b"E", b"1 2", b"null 1", b"", b"true", b"false", b'"1"',
    b'"null"', b"{}", b'{"a":1}', b"[]", b"[1]", b"[[1]]", b"\\u0031", b"1\x00", b"1\xa0",
]  # fmt: skip
_SPACES = [b"", b"", b"", b" ", b"\n", b"\t", b"\r\n", b"  \n "]
_NOT_JSON_SPACES = [b"\x0c", b"\x0b", b"\xc2\xa0", b"\x00", b"\xe2\x80\x83"]
_BAD_COLUMNS = [b'["a","b","c"]', b'["a","b","c","d","e"]', b'["a","a","c","d"]',
                b'["a","b","c","d\\u0000"]', b'["a","b",3,"d"]', b'"a"', b"[]"]  # fmt: skip
_MUTATION_BYTES = b'[]{},:"\\ \n0123456789eE.+-nulNaIfity\x00'


_WHOLE = [b"0", b"-0", b"-0.0", b"3.0", b"1e3", b"1E+2", b"2147483647", b"-2147483647",
          b"null", b"1.0e0", b"2147483648", b"-2147483648", b"2.5", b"1e10"]  # fmt: skip


def _random_number(rng: Random, hostile: bool, whole: bool = False) -> bytes:
    choice = rng.random()
    if hostile and choice < 0.0005:
        return rng.choice(_INFINITE)
    if whole:  # for integer columns: whole numbers, rarely one R cannot hold
        if choice < 0.995:
            return str(rng.randint(-(2**31) + 1, 2**31 - 1)).encode()
        return rng.choice(_WHOLE)
    if choice < 0.4:
        return rng.choice(_NUMBERS)
    if choice < 0.7:
        return repr(rng.uniform(-1e6, 1e6)).encode()
    if choice < 0.85:
        return str(rng.randint(-(2**40), 2**40)).encode()
    mantissa = f"{rng.uniform(-10, 10):.{rng.randint(0, 17)}f}".rstrip(".")
    return f"{mantissa}{rng.choice('eE')}{rng.choice(['', '+', '-'])}{rng.randint(0, 300)}".encode()


def _spaced(rng: Random, token: bytes, hostile: bool) -> bytes:
    pool = _SPACES + (_NOT_JSON_SPACES if hostile and rng.random() < 0.002 else [])
    return rng.choice(pool) + token + rng.choice(pool)


def _data_text(rng: Random, nrows: int, width: int, hostile: bool, whole: bool) -> bytes:
    rows = []
    for _ in range(nrows):
        row = [_spaced(rng, _random_number(rng, hostile, whole), hostile) for _ in range(width)]
        if hostile and rng.random() < 0.01:
            row[rng.randrange(width)] = rng.choice(_BAD_TOKENS)
        if hostile and rng.random() < 0.005:
            row.pop() if rng.random() < 0.5 else row.append(_random_number(rng, hostile))
        text = b"[" + b",".join(row) + (b"," if hostile and rng.random() < 0.003 else b"") + b"]"
        rows.append(_spaced(rng, text, hostile))
    closing = b"," if hostile and rng.random() < 0.02 else b""
    return b"[" + b",".join(rows) + closing + b"]"


def _json_string(rng: Random, data: bytes) -> bytes:
    """A string value, sometimes holding what looks like the data (or a forged marker)."""
    forged = [b"\\u0000rscore:data", b"\\\\u0000rscore:data", b"\\u0000", b"rscore:data"]
    pieces = [b"note", b"[[1,2,3,4]]", b"[1,2],[3", b"]]", data, *forged, b'\\"', b"\\\\", b"{[}]"]
    return b'"' + b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 3))) + b'"'


def _extra_value(rng: Random, data: bytes) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return _json_string(rng, data)
    if choice < 0.45:
        return data  # another array of rows: longer, shorter or the same as data's
    if choice < 0.6:
        return b"[" + data + b"," + data + b"]"
    if choice < 0.75:
        return b'{"data":' + rng.choice([data, _json_string(rng, data), b"[]"]) + b"}"
    return rng.choice([b"1", b"null", b"true", b"[]", b"{}", b"[1e5,-0]"])


def _generated_body(rng: Random, names: list[str], whole: bool = False) -> bytes:
    hostile = rng.random() < 0.5
    nrows = rng.randint(60, 160)
    data = _data_text(rng, nrows, len(names), hostile, whole)
    columns = orjson.dumps(names)
    if hostile and rng.random() < 0.05:
        columns = rng.choice(_BAD_COLUMNS)
    members = [(b'"columns"', columns), (b'"data"', data)]
    if rng.random() < 0.3:
        members.append((b'"note"', _extra_value(rng, data)))
    if hostile and rng.random() < 0.15:  # a duplicate key: JSON keeps the last
        key = rng.choice([b'"data"', b'"columns"'])
        members.append((key, _extra_value(rng, data) if key == b'"data"' else columns))
    rng.shuffle(members)
    split = b"{" + b",".join(_spaced(rng, k, False) + b":" + v for k, v in members) + b"}"
    top = [(b'"dataframe_split"', split)]
    if rng.random() < 0.3:
        top.append((b'"extra"', _extra_value(rng, data)))
    if hostile and rng.random() < 0.05:
        top.append((rng.choice([b'"data"', b'"dataframe_records"']), b"[]"))
    if hostile and rng.random() < 0.05:
        top.append((b'"dataframe_split"', rng.choice([split, b'{"columns":[],"data":[]}'])))
    rng.shuffle(top)
    body = b"{" + b",".join(k + b":" + _spaced(rng, v, False) for k, v in top) + b"}"
    if hostile and rng.random() < 0.02:
        body += rng.choice([b",", b"}", b" x", b"\n"])
    for _ in range(rng.randint(0, 2) if hostile and rng.random() < 0.4 else 0):
        body = _mutated_bytes(rng, body)
    return body


def _mutated_bytes(rng: Random, body: bytes) -> bytes:
    at = rng.randrange(len(body))
    choice = rng.random()
    if choice < 0.4:
        return body[:at] + bytes([rng.choice(_MUTATION_BYTES)]) + body[at:]
    if choice < 0.7:
        return body[:at] + body[at + 1 :]
    if choice < 0.9:
        return body[:at] + bytes([rng.choice(_MUTATION_BYTES)]) + body[at + 1 :]
    stop = min(len(body), at + rng.randint(1, 40))
    return body[:stop] + body[at:stop] + body[stop:]  # a slice repeated


def _general_or_error(body: bytes, prototype: Prototype, limits: RequestLimits) -> Any:
    try:
        return coerce(parse_body(body, prototype.known, limits), prototype)
    except ScoringError as exc:
        return exc


def _assert_exactly_the_general_frame(fast: TypedFrame, slow: TypedFrame) -> None:
    assert fast.nrows == slow.nrows
    assert [(c.name, c.kind) for c in fast.columns] == [(c.name, c.kind) for c in slow.columns]
    for mine, theirs in zip(fast.columns, slow.columns, strict=True):
        assert isinstance(mine.values, np.ndarray)
        if mine.kind == NUMERIC:  # bit for bit: -0.0 is not 0.0, NaN (null) is NaN
            assert isinstance(theirs.values, np.ndarray)
            assert mine.values.tobytes() == theirs.values.tobytes()
        else:  # integers: the same whole numbers, NaN where the general path has None
            assert len(theirs.values) == len(mine.values)
            for got, want in zip(mine.values.tolist(), theirs.values, strict=True):
                assert (want is None and np.isnan(got)) or (type(want) is int and got == want)


FUZZ_PROTOTYPES = [
    PROTOTYPE,
    Prototype((Column("b", NUMERIC), Column("d", INTEGER)), "ptype.rds"),
    Prototype(tuple(Column(name, INTEGER) for name in NAMES), "ptype.rds"),
]


def test_generated_bodies_read_here_exactly_as_the_general_path_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(numeric_split_module, "MIN_BODY_BYTES", 0)  # small bodies: many
    rng = Random(20)
    read = refused = 0
    for case in range(FUZZ_CASES):
        names = rng.choice([NAMES, NAMES, ["d", "c", "b", "a"], [*NAMES, "extra"]])
        prototype = rng.choice(FUZZ_PROTOTYPES)
        whole = prototype is not PROTOTYPE and rng.random() < 0.9
        body = _generated_body(rng, names, whole)
        if rng.random() < 0.05:
            limits = RequestLimits(max_rows=rng.randint(60, 160), max_columns=rng.randint(3, 5))
        else:
            limits = LIMITS
        fast = numeric_split(body, prototype, limits)
        slow = _general_or_error(body, prototype, limits)
        if fast is None:
            refused += 1
            continue
        read += 1
        context = f"case {case}: {body[:300]!r}"
        assert isinstance(slow, TypedFrame), f"{context}: the general path said {slow}"
        _assert_exactly_the_general_frame(fast.frame, slow)
        written = orjson.dumps(fast.document)
        assert b"\n" not in written, context  # one line of JSON Lines
        assert orjson.loads(written) == parse_json(body), context
    # Neither side vacuous: most plain bodies are read, most hostile ones are not.
    assert read > FUZZ_CASES // 5
    assert refused > FUZZ_CASES // 5
