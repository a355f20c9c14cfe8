"""PNG plots of runs, comparisons and tuning, with matplotlib's Agg backend.

Draws only from the data handed in and writes only the PNG paths given; never simulates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: plots are files

import matplotlib.pyplot as plt
import numpy as np

from sim.engine import SAMPLE_S

__all__ = ["plot_compare", "plot_pareto", "plot_run"]


def _hours(series: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    t = series["t_s"]
    if t.size and t[-1] > 3 * 3600:
        return t / 3600.0, "time (h)"
    return t / 60.0, "time (min)"


def plot_run(series: Mapping[str, np.ndarray], summary: Mapping[str, Any], out: Path) -> list[Path]:
    """load.png (load vs pods vs nodes), latency.png (percentiles), cost.png (cumulative)."""
    x, label = _hours(series)
    title = f"{summary.get('scenario', '')} - {summary.get('policy', '')}"
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, series["arrivals"] / SAMPLE_S, color="tab:gray", lw=0.8, label="arrivals/s")
    ax.set_xlabel(label)
    ax.set_ylabel("requests/s")
    right = ax.twinx()
    right.step(x, series["ready_pods"], where="post", color="tab:blue", label="ready pods")
    right.step(x, series["nodes"], where="post", color="tab:orange", label="nodes")
    right.set_ylabel("pods, nodes")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left")
    ax.set_title(f"load, pods and nodes: {title}")
    paths.append(_save(fig, out / "load.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, series["p50_s"], lw=0.8, label="p50")
    ax.plot(x, series["p99_s"], lw=0.8, label="p99")
    slo = summary.get("slo_latency_p99_s")
    if slo:
        ax.axhline(slo, color="tab:red", ls="--", lw=0.8, label=f"SLO p99 {slo:g} s")
    failures = series["rejections"] + series["timeouts"]
    if failures.any():
        right = ax.twinx()
        right.bar(x, failures, width=(x[1] - x[0]) if x.size > 1 else 1.0, color="tab:red",
                  alpha=0.3, label="429 + 504")  # fmt: skip
        right.set_ylabel("failed requests per 10 s")
    ax.set_xlabel(label)
    ax.set_ylabel("latency (s)")
    ax.set_yscale("log")
    ax.legend(loc="upper left")
    ax.set_title(f"latency of completed requests per 10 s: {title}")
    paths.append(_save(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, series["cost_cum_usd"], color="tab:green")
    ax.set_xlabel(label)
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_title(f"cost: {title}")
    paths.append(_save(fig, out / "cost.png"))
    return paths


def plot_compare(
    runs: Mapping[str, tuple[Mapping[str, Any], Mapping[str, np.ndarray]]], out: Path
) -> Path:
    """Cumulative cost and ready pods over time, one line per policy."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    label = "time"
    styles = ("-", "--", "-.", ":")  # policies that coincide stay visible
    for i, (policy, (summary, series)) in enumerate(runs.items()):
        x, label = _hours(series)
        met = "SLO met" if summary["slo_met"] else "SLO missed"
        style = styles[i % len(styles)]
        top.plot(x, series["cost_cum_usd"], style, label=f"{policy} ({met})")
        bottom.step(x, series["ready_pods"], style, where="post", label=policy, lw=1.0)
    top.set_ylabel("cumulative cost (USD)")
    top.legend(loc="upper left")
    bottom.set_ylabel("ready pods")
    bottom.set_xlabel(label)
    top.set_title("policies side by side")
    return _save(fig, out)


def plot_pareto(
    points: Sequence[tuple[float, float]], front: Sequence[int], best: int | None,
    slo: float, out: Path,
) -> Path:  # fmt: skip
    """Cost vs p99 over all arrivals of every trial; the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(8, 5))
    costs = np.array([c for c, _ in points])
    p99 = np.array([p for _, p in points])
    cap = max([v for v in p99 if np.isfinite(v)] + [slo]) * 1.5
    shown = np.where(np.isfinite(p99), p99, cap)
    ax.scatter(costs, shown, s=14, color="tab:gray", label="trials (failed > 1 %: at the top)")
    order = sorted(front, key=lambda i: costs[i])
    ax.plot(costs[order], shown[order], "o-", color="tab:blue", label="Pareto front")
    if best is not None:
        ax.scatter([costs[best]], [shown[best]], s=80, color="tab:green", marker="*",
                   label="cheapest meeting the SLO", zorder=3)  # fmt: skip
    ax.axhline(slo, color="tab:red", ls="--", lw=0.8, label=f"SLO p99 {slo:g} s")
    ax.set_xlabel("cost (USD)")
    ax.set_ylabel("p99 latency over all arrivals (s)")
    ax.set_yscale("log")
    ax.legend(loc="upper right")
    ax.set_title("tuning: cost vs SLO")
    return _save(fig, out)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
