"""The plots say what they must: load.png shows the policy's desired replicas, ready
pods and nodes on whole-number ticks with the legend outside the axes; compare.png names
the scenario and each policy's cost relative to the oracle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.transforms import Bbox

import rscore.sim.plots
from rscore.sim.plots import plot_compare, plot_run


def series(buckets: int = 60, desired: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ready = rng.integers(1, 9, buckets).astype(float)
    return {
        "t_s": np.arange(buckets) * 10.0,
        "arrivals": rng.poisson(300, buckets),
        "completions": rng.poisson(300, buckets),
        "rejections": np.zeros(buckets, dtype=np.int64),
        "timeouts": np.zeros(buckets, dtype=np.int64),
        "p50_s": np.full(buckets, 0.02),
        "p99_s": np.full(buckets, 0.2),
        "desired_replicas": ready + 1 if desired else np.full(buckets, np.nan),
        "ready_pods": ready,
        "nodes": np.ceil(ready / 2),
        "cost_usd": np.full(buckets, 0.001),
        "cost_cum_usd": np.arange(1, buckets + 1) * 0.001,
    }


@dataclass
class Saved:
    """A figure as it was saved: its title, legend texts and where things are."""

    fig: plt.Figure
    texts: list[str]
    legend_box: Bbox
    axes_boxes: list[Bbox]

    def legend_outside_the_data(self) -> bool:
        return all(not self.legend_box.overlaps(box) for box in self.axes_boxes)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Saved]:
    """The figures as they are saved, by file name (then saved as usual)."""
    saved: dict[str, Saved] = {}
    real_save = rscore.sim.plots._save

    def keep(fig: plt.Figure, path: Path) -> Path:
        fig.canvas.draw()  # lay it out, so that positions are final
        for legend in fig.legends:  # a figure's own legend (load.png, compare.png)
            saved[path.name] = Saved(
                fig,
                [t.get_text() for t in legend.get_texts()],
                legend.get_window_extent(),
                [ax.get_window_extent() for ax in fig.axes],
            )
        return real_save(fig, path)

    monkeypatch.setattr(rscore.sim.plots, "_save", keep)
    return saved


@pytest.mark.parametrize("desired", [True, False], ids=["deciding", "static"])
def test_load_plot_shows_desired_ready_nodes_and_arrivals(
    tmp_path: Path, figures: dict[str, Saved], desired: bool
) -> None:
    summary = {"scenario": "nasa", "policy": "kpa", "slo_latency_p99_s": 1.0}
    paths = plot_run(series(desired=desired), summary, tmp_path)
    assert [p.name for p in paths] == ["load.png", "latency.png", "cost.png"]
    assert (tmp_path / "load.png").read_bytes()[:4] == b"\x89PNG"
    load = figures["load.png"]
    texts = load.texts
    assert any(t.startswith("arrivals/s") for t in texts)
    assert "ready pods" in texts
    assert "nodes" in texts
    assert any(t.startswith("desired replicas") for t in texts) == desired
    # The legend is outside every axes (it hides no data).
    assert load.legend_outside_the_data()
    # Pods and nodes are counted on whole-number ticks.
    right = load.fig.axes[1]
    ticks = [t for t in right.get_yticks() if right.get_ylim()[0] <= t <= right.get_ylim()[1]]
    assert ticks
    assert all(float(t).is_integer() for t in ticks)
    assert "nasa" in load.fig.get_suptitle()


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ({"oracle": 1.0, "kpa": 2.345, "rscore": 1.5},
         ["oracle: $1.00, SLO met", "kpa: $2.35 = 2.35x oracle, SLO missed",
          "rscore: $1.50 = 1.50x oracle, SLO met"]),
        ({"kpa": None, "rscore": None},
         ["kpa: $2.35, SLO missed", "rscore: $1.50, SLO met"]),
        ({"kpa": "absent"}, ["kpa: $2.35, SLO missed"]),
    ],
    ids=["with-oracle", "oracle-missing", "no-ratio-key"],
)  # fmt: skip
def test_compare_plot_names_the_scenario_and_the_cost_vs_the_oracle(
    tmp_path: Path, figures: dict[str, Saved], ratios: dict[str, Any], expected: list[str]
) -> None:
    costs = {"oracle": 1.0, "kpa": 2.345, "rscore": 1.5}
    runs = {}
    for policy, ratio in ratios.items():
        summary: dict[str, Any] = {
            "scenario": "nasa-day", "policy": policy, "cost_usd": costs[policy],
            "slo_met": policy != "kpa",
        }  # fmt: skip
        if ratio != "absent":
            summary["cost_vs_oracle"] = ratio
        runs[policy] = (summary, series())
    path = plot_compare(runs, tmp_path / "compare.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    compare = figures["compare.png"]
    assert compare.texts == expected
    assert compare.fig.get_suptitle().startswith("nasa-day")
    assert compare.legend_outside_the_data()
