"""Writing a run's files: summary.json, timeseries.csv and the plots.

The only module of sim/ that writes run results to disk (tuning writes its own YAML).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rscore.sim.metrics import TIMESERIES_COLUMNS

__all__ = ["write_json", "write_timeseries"]


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


def _cell(value: float) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return f"{value:.6g}"
    return str(value)


def write_timeseries(path: Path, series: Mapping[str, np.ndarray], nodes_column: str) -> Path:
    """One row per 10 s bucket; `nodes` is named after the pool (e.g. nodes_cpu)."""
    header = [nodes_column if c == "nodes" else c for c in TIMESERIES_COLUMNS]
    columns = [series[c] for c in TIMESERIES_COLUMNS]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in zip(*(c.tolist() for c in columns), strict=True):
            writer.writerow([_cell(v) for v in row])
    return path
