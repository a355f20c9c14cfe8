"""Shared by the benchmarks: percentiles, the machine's description, and the docs page."""

from __future__ import annotations

import re
import statistics
import subprocess
from pathlib import Path

from rscore.cli.processes import machine as host

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean of durations in seconds, as milliseconds."""
    return {
        "p50": percentile(values, 0.50) * 1e3,
        "p90": percentile(values, 0.90) * 1e3,
        "p99": percentile(values, 0.99) * 1e3,
        "mean": statistics.fmean(values) * 1e3,
    }


def machine() -> str:
    """The machine (rscore.cli.processes.machine) and R's version."""
    r_version = subprocess.run(
        ["R", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    return f"{host()}; {r_version[0] if r_version else 'R unknown'}"


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section between `<!-- name -->` markers in docs/benchmarks.md."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
