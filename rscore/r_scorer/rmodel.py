"""A bundle loaded into embedded R, ready to score typed frames.

`start_r()` starts R once per process (rpy2 is not thread-safe: one R per process, and
only the thread that started it may call it) and sources `R/rscore.R` and
`R/adapters.R`. `load_model()` loads a bundle: its packages, score.R, init(), the
predict() method for the model's classes (found as R dispatches), the adapter of its
family if it has one, and the input prototype. `LoadedModel.score()` is the hot path.

Never prints to stdout (R's console goes to stderr, or to the log through
`route_console()`, so `rscore predict` output stays clean JSON), and never lets an R
condition escape as anything but a ScoringError.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from rscore.r_scorer.bundle import BundleSpec
from rscore.r_scorer.errors import BundleError
from rscore.r_scorer.protocol import Predictions
from rscore.r_scorer.prototype import FACTOR, ORDERED, Column, Prototype, TypedFrame
from rscore.r_scorer.rconsole import Console, RawConsole

_console: Console = RawConsole()


def route_console(console: Console) -> None:
    """Send R's console output, and the warnings of loading a bundle, to `console` from
    now on. Call it before `start_r()` to catch R's own start-up output too."""
    global _console  # noqa: PLW0603 - one R per process, one console for it
    _console = console
    _install_console_callbacks()


def _install_console_callbacks() -> None:
    from rpy2.rinterface_lib import callbacks

    # rpy2 looks these up at each write: the current console gets every write.
    callbacks.consolewrite_print = _write_print
    callbacks.consolewrite_warnerror = _write_warnerror
    callbacks.showmessage = _show_message


def _write_print(text: str) -> None:
    _console.write_print(text)


def _write_warnerror(text: str) -> None:
    _console.write_warnerror(text)


def _show_message(text: str) -> None:  # R's "dialog" messages: whole, with no newline
    _console.write_warnerror(text + "\n")


@cache
def start_r() -> Any:
    """Start embedded R in this process (once) and return rscore's R environment."""
    _install_console_callbacks()
    import rpy2.rinterface as ri

    ri.initr_simple()
    env = ri.baseenv["new.env"]()
    for name in _R_SOURCES:
        source = resources.files("rscore.r_scorer").joinpath(name).read_text(encoding="utf-8")
        ri.baseenv["eval"](ri.parse(source), env)
    return env


_R_SOURCES = ("R/rscore.R", "R/adapters.R")  # in this order: adapters use rscore.R's helpers


@dataclass(frozen=True)
class ScoreResult:
    """Predictions, one per row, and the seconds spent inside R."""

    predictions: Predictions  # a list, or (`score(as_json=True)`) a JsonArray
    r_seconds: float


class LoadedModel:
    """A bundle's state and score function, living in this process's R."""

    def __init__(
        self,
        spec: BundleSpec,
        prototype: Prototype,
        packages: tuple[str, ...],
        state: Any,
        score_function: Any,
        *,
        label: str = "score()",
    ) -> None:
        self.spec = spec
        self.prototype = prototype
        self.packages = packages
        self._state = state
        self._score_function = score_function
        self._levels = {
            column.name: column.levels
            for column in prototype.columns
            if column.kind in (FACTOR, ORDERED)
        }
        env = start_r()
        self._score_in_r = env[".score"]
        env[".serving_options"]()
        import rpy2.rinterface as ri

        # What a request runs, as its errors name it; built once, not per request.
        self._label = ri.StrSexpVector([label])

    def score(self, frame: TypedFrame, *, as_json: bool = False) -> ScoreResult:
        """Score a coerced frame; raises ModelError with R's message on failure.
        `as_json`: the predictions as their JSON text (a JsonArray), for the sidecar to
        pass on unparsed."""
        from rscore.r_scorer import rconvert

        if frame.nrows == 0:
            return ScoreResult([], 0.0)
        data = rconvert.r_data_frame(frame, self._levels)
        started = time.perf_counter()
        answer = self._score_in_r(self._score_function, self._state, data, self._label)
        r_seconds = time.perf_counter() - started
        if as_json:
            return ScoreResult(rconvert.json_predictions(answer), r_seconds)
        return ScoreResult(rconvert.python_predictions(answer), r_seconds)

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about the model, as plain data."""
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "batchable": self.spec.batchable,
            "splittable": self.spec.splittable,
            "packages": list(self.packages),
            "prototype": self.prototype.to_json(),
        }


def load_model(spec: BundleSpec) -> LoadedModel:
    """Load a bundle into R; raises BundleError naming the file or class at fault."""
    import rpy2.rinterface as ri

    from rscore.r_scorer import rconvert

    env = start_r()
    args = rconvert.r_named_list(
        {key: rconvert.r_argument(value) for key, value in spec.predict_args.items()}
    )
    outcome = env[".try_load_bundle"](
        ri.StrSexpVector([str(spec.path)]), ri.StrSexpVector(spec.packages), args
    )
    fields = _fields(outcome)
    for warning in fields["warnings"]:
        _console.warning(str(warning))
    _console.flush()
    if not fields["ok"][0]:
        raise BundleError(f"bundle {spec.path.name!r}: {fields['message'][0]}")
    loaded = _fields(fields["value"])
    described = _fields(loaded["prototype"])
    columns = tuple(
        Column(
            str(column["name"][0]),
            str(column["kind"][0]),
            tuple(str(level) for level in column["levels"]),
        )
        for column in map(_fields, described["columns"])
    )
    return LoadedModel(
        spec,
        Prototype(columns, str(described["source"][0])),
        tuple(str(package) for package in loaded["packages"]),
        loaded["state"],
        loaded["score"],
        label=str(loaded["label"][0]),
    )


def _fields(r_list: Any) -> dict[str, Any]:
    """A named R list as a dict of its elements."""
    return dict(zip(r_list.names, r_list, strict=True))
