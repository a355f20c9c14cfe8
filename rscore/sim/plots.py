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
from matplotlib.ticker import MaxNLocator

from rscore.sim.engine import SAMPLE_S

__all__ = ["plot_compare", "plot_pareto", "plot_run", "plot_validate"]


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

    paths.append(_plot_load(x, label, series, title, out / "load.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(x, series["p50_s"], lw=0.8, label="p50")
    ax.plot(x, series["p99_s"], lw=0.8, label="p99")
    slo = summary.get("slo_latency_p99_s")
    if slo:
        ax.axhline(slo, color="tab:red", ls="--", lw=0.8, label=f"SLO p99 {slo:g} s")
    failures = series["rejections"] + series["timeouts"]
    if failures.any():
        right = ax.twinx()
        # One filled step line, not a bar per bucket (a day has 8,640 buckets).
        right.fill_between(x, failures, step="post", color="tab:red", alpha=0.3, lw=0,
                           label="429 + 504")  # fmt: skip
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


def _plot_load(
    x: np.ndarray, label: str, series: Mapping[str, np.ndarray], title: str, path: Path
) -> Path:
    """Arrivals (left axis) against what the policy asked for, the ready pods and the
    nodes (right axis, whole numbers); the legend sits below the axes, outside the data."""
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    ax.fill_between(x, series["arrivals"] / SAMPLE_S, step="post", color="0.85", lw=0)
    ax.step(x, series["arrivals"] / SAMPLE_S, where="post", color="0.55", lw=0.6,
            label="arrivals/s (left, mean per 10 s)")  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel("arrivals per second")
    ax.set_ylim(bottom=0)
    ax.margins(x=0)
    right = ax.twinx()
    desired = series.get("desired_replicas")
    if desired is not None and np.isfinite(desired).any():
        right.step(x, desired, where="post", color="tab:purple", lw=0.9, ls="--",
                   label="desired replicas (policy)")  # fmt: skip
    right.step(x, series["ready_pods"], where="post", color="tab:blue", lw=1.2,
               label="ready pods")  # fmt: skip
    right.step(x, series["nodes"], where="post", color="tab:orange", lw=1.2, label="nodes")
    right.set_ylabel("pods, nodes")
    right.set_ylim(bottom=0)
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(f"load, pods and nodes: {title}")
    return _save(fig, path)


def _cost_label(policy: str, summary: Mapping[str, Any]) -> str:
    """'kpa: $12.30 = 1.85x oracle, SLO met' (without the ratio when there is none)."""
    parts = [f"{policy}: ${summary['cost_usd']:.2f}"]
    ratio = summary.get("cost_vs_oracle")
    if ratio is not None and policy != "oracle":
        parts[0] += f" = {ratio:.2f}x oracle"
    parts.append("SLO met" if summary["slo_met"] else "SLO missed")
    return ", ".join(parts)


def plot_compare(
    runs: Mapping[str, tuple[Mapping[str, Any], Mapping[str, np.ndarray]]], out: Path
) -> Path:
    """Cumulative cost and ready pods over time, one line per policy; the legend gives
    each policy's cost, relative to the oracle's when the summary has `cost_vs_oracle`,
    and the title names the scenario."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True,
                                      layout="constrained")  # fmt: skip
    label = "time"
    styles = ("-", "--", "-.", ":")  # policies that coincide stay visible
    scenario = ""
    for i, (policy, (summary, series)) in enumerate(runs.items()):
        x, label = _hours(series)
        scenario = scenario or str(summary.get("scenario", ""))
        style = styles[i % len(styles)]
        top.plot(x, series["cost_cum_usd"], style, label=_cost_label(policy, summary))
        bottom.step(x, series["ready_pods"], style, where="post", lw=1.0)
    top.set_ylabel("cumulative cost (USD)")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("ready pods")
    bottom.set_ylim(bottom=0)
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel(label)
    bottom.margins(x=0)
    handles = top.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)),
               frameon=False)  # fmt: skip
    fig.suptitle(f"{scenario}: cost and ready pods by policy" if scenario else "policies")
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


def plot_validate(
    levels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str, out: Path
) -> Path:
    """`rscore sim validate`: per level, the CDF of the real pod's latencies (answered
    requests) against the simulator's, with and without the sidecar model."""
    fig, axes = plt.subplots(1, max(1, len(levels)), figsize=(5 * max(1, len(levels)), 4),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, (label, real, sim, bare) in zip(axes[0], levels, strict=False):
        for values, name, style in (
            (real, "real pod", {"color": "black", "lw": 1.6}),
            (sim, "simulated", {"color": "tab:blue", "lw": 1.2}),
            (bare, "simulated, no sidecar model", {"color": "tab:gray", "lw": 1.0, "ls": ":"}),
        ):
            if values.size:
                ordered = np.sort(values) * 1e3
                ax.plot(ordered, np.arange(1, ordered.size + 1) / ordered.size, label=name,
                        **style)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("share of answered requests")
    axes[0][0].legend(loc="lower right", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return _save(fig, out)


def _save(fig: plt.Figure, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
