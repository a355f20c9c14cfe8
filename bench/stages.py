"""Where the time of one large request goes, stage by stage, in one process.

    python -m bench.stages [--bundle examples/build/iris-rf] [--rows 100000] [--no-write]

Loads the bundle into R in this process and runs the path a `dataframe_split` request
takes through rscore, timing each stage (median of 3): reading the body into columns
(straight, `rscore.r_scorer.numeric_split`, where the sidecar does; else parsing it, building
its frame and coercing to the prototype), encoding the worker protocol's request and
decoding it, building the R data.frame, R's `.score()` (predict), converting its answer
back (as JSON text for a long one, as the worker does), encoding and decoding the
worker's reply, and the JSON response. The HTTP transfer and the socket are not in it
(`make bench-big` measures end to end; its "before" rows time an older checkout).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.big import MODELS, body_of, inputs, load_average
from bench.report import machine, write_section

ROOT = Path(__file__).resolve().parent.parent


def run(bundle: Path, rows: int, repeats: int) -> list[tuple[str, float]]:
    from rscore.r_scorer import protocol, rconvert
    from rscore.r_scorer.bundle import read_bundle
    from rscore.r_scorer.numeric_split import numeric_split
    from rscore.r_scorer.payload import RequestLimits, frame_from_document, parse_json
    from rscore.r_scorer.prototype import coerce
    from rscore.r_scorer.rmodel import load_model

    long_answer = rows >= protocol.JSON_REPLY_ROWS  # the worker sends it as JSON text

    model = load_model(read_bundle(bundle))
    (described,) = [m for m in MODELS if m.bundle == bundle.name]
    body = body_of(described, inputs(described, rows))
    limits = RequestLimits(max_rows=max(rows, 1))
    timings: dict[str, list[float]] = {}

    def timed(stage: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        timings.setdefault(stage, []).append(time.perf_counter() - started)
        return result

    def general() -> Any:
        document = timed("parse the body (orjson)", lambda: parse_json(body))
        frame = timed(
            "build its frame",
            lambda document=document: frame_from_document(document, model.prototype.known),
        )
        return timed("coerce to the prototype", lambda frame=frame: coerce(frame, model.prototype))

    for _ in range(repeats):
        read = timed(
            "read the body into columns (numeric_split)",
            lambda: numeric_split(body, model.prototype, limits),
        )
        typed = general() if read is None else read.frame
        framed = timed(
            "encode the worker request",
            lambda typed=typed: protocol.encode(protocol.score_request(1, typed, 5.0)),
        )
        received = timed(
            "decode it (worker)",
            lambda framed=framed: protocol.frame_of_request(protocol.decode(framed[4:])),
        )
        data = timed(
            "build the R data.frame",
            lambda received=received: rconvert.r_data_frame(received, model._levels),
        )
        answer = timed(
            "R .score() (predict)",
            lambda data=data: model._score_in_r(
                model._score_function, model._state, data, model._label
            ),
        )
        if long_answer:
            predictions = timed(
                "convert the answer back (as JSON text)",
                lambda answer=answer: rconvert.json_predictions(answer),
            )
        else:
            predictions = timed(
                "convert the answer back",
                lambda answer=answer: rconvert.python_predictions(answer),
            )
        reply = timed(
            "encode the reply (worker)",
            lambda predictions=predictions: protocol.encode(protocol.ok_reply(1, predictions, 0)),
        )
        decoded = timed("decode the reply", lambda reply=reply: protocol.decode(reply[4:]))
        timed(
            "the JSON response",
            lambda decoded=decoded: orjson.dumps(
                {"predictions": protocol.prediction_json(decoded["predictions"])}
            ),
        )
    return [(stage, statistics.median(times)) for stage, times in timings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "examples" / "build" / "iris-rf")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="Keep docs/ as it is.")
    args = parser.parse_args()
    stages = run(args.bundle, args.rows, args.repeats)
    total = sum(seconds for _, seconds in stages)
    lines = [f"| {stage} | {seconds * 1e3:.1f} |" for stage, seconds in stages]
    report = f"""## One large request, stage by stage

`python -m bench.stages --bundle {args.bundle.name} --rows {args.rows}`, on {machine()};
load average {load_average()} (the machine's other work).
One {args.rows:,}-row `dataframe_split` request's path through rscore in one process
(median of {args.repeats}; the HTTP transfer and the socket are not in it).

| stage | ms |
|---|---:|
{chr(10).join(lines)}
| **all** | **{total * 1e3:.1f}** |
"""
    print(report)
    if not args.no_write:
        write_section(f"stages-{args.bundle.name}", report)


if __name__ == "__main__":
    main()
