"""`rscore sim run|compare|tune`: the simulator's command line (`measure` and `validate`,
which drive the real scorer, are added by rscore.cli).

Each command parses its flags, calls the simulator, and writes files into `--out`;
the decisions live in the modules it calls. Never changes a scenario file. Imports
numpy and the simulator only inside the commands: `rscore` loads this module for every
subcommand and must stay quick to start.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from rscore.sim import ORACLES, POLICY_KINDS

if TYPE_CHECKING:
    import numpy as np

    from rscore.sim.scenario import Scenario

__all__ = ["sim"]

_SCENARIO = click.argument(
    "scenario_path", metavar="SCENARIO.toml",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)  # fmt: skip
_OUT = click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results (created if missing).",
)  # fmt: skip


def _load(path: Path, seed: int | None, duration_s: float | None) -> Scenario:
    from rscore.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(path)
    except (ScenarioError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if seed is not None:
        scenario = dataclasses.replace(scenario, seed=seed)
    if duration_s is not None:
        scenario = dataclasses.replace(scenario, duration_s=duration_s)
    return scenario


def _overrides(command: Callable[..., None]) -> Callable[..., None]:
    seed = click.option(
        "--seed", type=click.IntRange(min=0), default=None, help="Override the scenario's seed."
    )
    duration = click.option(
        "--duration-s", type=click.FloatRange(min=0, min_open=True), default=None,
        help="Override the scenario's duration.",
    )  # fmt: skip
    return duration(seed(command))


@contextmanager
def _progress(total_s: float, label: str, quiet: bool) -> Iterator[Callable[[float], None]]:
    """A tqdm bar over simulated seconds; it appears only for runs longer than 2 s."""
    from tqdm import tqdm

    bar = tqdm(total=round(total_s), unit="sim s", desc=label, delay=2.0, disable=quiet,
               leave=False, file=sys.stderr)  # fmt: skip

    def update(now: float) -> None:
        bar.update(max(0, min(round(now), round(total_s)) - bar.n))

    try:
        yield update
    finally:
        bar.close()


@click.group()
def sim() -> None:
    """Simulate scaling policies on workloads and real traces (cost and SLO)."""


def _run_files(run: Any, out: Path, plots: bool) -> list[Path]:
    from rscore.sim.metrics import timeseries
    from rscore.sim.output import write_json, write_timeseries
    from rscore.sim.plots import plot_run

    scenario = run.scenario
    series = timeseries(run.result, price_per_hour=scenario.nodes.price_per_hour)
    paths = [
        write_json(out / "summary.json", run.summary),
        write_timeseries(out / "timeseries.csv", series, f"nodes_{scenario.nodes.kind}"),
    ]
    if plots:
        paths += plot_run(series, run.summary, out)
    return paths


@sim.command()
@_SCENARIO
@_OUT
@click.option("--policy", type=click.Choice(POLICY_KINDS), default=None,
              help="Override the scenario's [policy] kind.")  # fmt: skip
@_overrides
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--quiet", is_flag=True, help="No progress bar, no summary on stdout.")
def run(
    *,
    scenario_path: Path,
    out_dir: Path,
    policy: str | None,
    seed: int | None,
    duration_s: float | None,
    no_plots: bool,
    quiet: bool,
) -> None:
    """Simulate SCENARIO.toml; write summary.json, timeseries.csv and plots into --out."""
    from rscore.sim.run import run_scenario

    scenario = _load(scenario_path, seed, duration_s)
    if policy is not None:
        scenario = scenario.with_policy(policy)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress(scenario.duration_s, scenario.policy_kind, quiet) as progress:
        result = run_scenario(scenario, progress=progress)
    paths = _run_files(result, out_dir, plots=not no_plots)
    if not quiet:
        from rscore.sim.workload import describe

        click.echo(describe(scenario.workload))  # the scale and scale_mode used
        click.echo(_table({scenario.policy_kind: result.summary}))
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


def _run_policy(job: tuple[Scenario, str]) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    from rscore.sim.metrics import timeseries
    from rscore.sim.run import run_scenario

    scenario, policy = job
    run = run_scenario(scenario.with_policy(policy))
    series = timeseries(run.result, price_per_hour=scenario.nodes.price_per_hour)
    return policy, run.summary, series


_COLUMNS = (
    ("policy", "policy", "{}"),
    ("cost $", "cost_usd", "{:.3f}"),
    ("vs oracle", "cost_vs_oracle", "{:.2f}"),
    ("node-h", "node_hours", "{:.2f}"),
    ("pods", "mean_ready_pods", "{:.1f}"),
    ("p50 s", "latency_p50_s", "{:.3f}"),
    ("p99 s", "latency_p99_s", "{:.3f}"),
    ("p99 all s", "latency_p99_all_s", "{:.3f}"),
    ("429", "rejected", "{}"),
    ("504", "timeouts", "{}"),
    ("SLO", "slo_met", "{}"),
    ("wall s", "wall_s", "{:.2f}"),
)


def _table(summaries: dict[str, dict[str, Any]]) -> str:
    """A plain-text table, one row per policy (None shows as 'inf': failures > 1 %).

    The "vs oracle" column (cost / the oracle's cost) appears when the summaries carry
    `cost_vs_oracle` (compare's do); '-' when there is no oracle to compare with.
    """
    with_oracle = any("cost_vs_oracle" in summary for summary in summaries.values())
    columns = [c for c in _COLUMNS if with_oracle or c[1] != "cost_vs_oracle"]
    rows = [[head for head, _, _ in columns]]
    for policy, summary in summaries.items():
        row = []
        for _, key, fmt in columns:
            value = policy if key == "policy" else summary.get(key)
            if key == "slo_met":
                row.append("met" if value else "missed")
            elif key == "cost_vs_oracle" and value is None:
                row.append("-")
            elif value is None:
                row.append("inf")
            else:
                row.append(fmt.format(value))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]  # fmt: skip
    return "\n".join(lines)


@sim.command()
@_SCENARIO
@_OUT
@click.option("--policies", default="static,rscore,kpa,hpa,oracle", show_default=True,
              help="Comma-separated policies to compare.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Parallel processes [default: one per policy, at most the CPUs].")  # fmt: skip
@_overrides
def compare(
    *,
    scenario_path: Path,
    out_dir: Path,
    policies: str,
    jobs: int | None,
    seed: int | None,
    duration_s: float | None,
) -> None:
    """Run SCENARIO.toml under several policies; write compare.json and compare.png."""
    from rscore.sim.metrics import add_cost_vs_oracle, cold_start_note
    from rscore.sim.output import write_json, write_timeseries
    from rscore.sim.plots import plot_compare
    from rscore.sim.workload import describe

    names = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICY_KINDS]
    if unknown or not names:
        raise click.BadParameter(f"unknown policies {unknown}; choose from {POLICY_KINDS}")
    scenario = _load(scenario_path, seed, duration_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The oracles (several replays each) go first, so that they are not the last to start.
    work = sorted(((scenario, p) for p in names), key=lambda job: job[1] not in ORACLES)
    workers = min(len(names), jobs or os.cpu_count() or 1)
    if workers <= 1:
        finished = [_run_policy(job) for job in work]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            finished = list(pool.map(_run_policy, work))
    done = sorted(finished, key=lambda item: names.index(item[0]))
    summaries = {policy: summary for policy, summary, _ in done}
    add_cost_vs_oracle(summaries)
    write_json(out_dir / "compare.json", summaries)
    for policy, _, series in done:
        write_timeseries(
            out_dir / f"timeseries-{policy}.csv", series, f"nodes_{scenario.nodes.kind}"
        )
    plot_compare({policy: (summaries[policy], series) for policy, _, series in done},
                 out_dir / "compare.png")  # fmt: skip
    click.echo(describe(scenario.workload))  # the scale and scale_mode used
    click.echo(_table(summaries))
    note = cold_start_note(summaries, scenario.pods.initial)
    if note is not None:
        click.echo(note, err=True)
    click.echo(f"wrote {out_dir / 'compare.json'} and {out_dir / 'compare.png'}", err=True)


# Seconds before tune's progress bar appears (a module constant so a test can show it).
_TRIAL_BAR_DELAY_S = 2.0


class _LineTracker:
    """A text stream wrapper that remembers whether the last character written ended
    a line, so that a progress bar can be ended cleanly on any stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.mid_line = False

    def write(self, text: str) -> int:
        if text:
            self.mid_line = not text.endswith("\n")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())


@contextmanager
def _trial_bar(trials: int) -> Iterator[Callable[[], None]]:
    """tune's progress bar on stderr, over trials; gone before the table is printed.

    tqdm's `leave=False` erases the bar with spaces and a carriage return, which leaves
    a terminal's cursor at the start of an empty line but, when stdout and stderr are
    one file or pipe (`2>&1`), would make the table's first line share the bar's line:
    there the bar is ended with a newline instead.
    """
    from tqdm import tqdm

    stream = _LineTracker(sys.stderr)
    bar = tqdm(total=trials, unit="trial", delay=_TRIAL_BAR_DELAY_S, leave=False,
               file=stream)  # fmt: skip

    def advance() -> None:
        bar.update(1)

    try:
        yield advance
    finally:
        bar.close()
        if stream.mid_line and not stream.isatty():
            stream.write("\n")
        stream.flush()


@sim.command()
@_SCENARIO
@_OUT
@click.option("--trials", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel processes.")  # fmt: skip
@click.option("--name", default=None, help="metadata.name and Deployment [default: scenario].")
@click.option("--namespace", default=None, help="metadata.namespace of the YAML.")
@_overrides
def tune(
    *,
    scenario_path: Path,
    out_dir: Path,
    trials: int,
    jobs: int,
    name: str | None,
    namespace: str | None,
    seed: int | None,
    duration_s: float | None,
) -> None:
    """Search the rscore policy's parameters for the cheapest that meets the SLO.

    Writes tune.json (every trial), pareto.png, and scoringautoscaler.yaml (the best).
    """
    import yaml

    from rscore.sim.output import write_json
    from rscore.sim.plots import plot_pareto
    from rscore.sim.scenario import ScenarioError
    from rscore.sim.tune import best_trial, pareto_front, propose, run_trials, scoring_autoscaler

    scenario = _load(scenario_path, seed, duration_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    proposals = propose(scenario, trials, scenario.seed)
    with _trial_bar(trials) as advance:
        try:
            results = run_trials(scenario, proposals, jobs, on_done=lambda _: advance())
        except ScenarioError as exc:
            raise click.ClickException(str(exc)) from None
    front = pareto_front(results)
    best = best_trial(results)
    write_json(
        out_dir / "tune.json",
        {
            "best": best,
            "pareto_front": front,
            "trials": [{"params": t.params, "summary": t.summary} for t in results],
        },
    )
    plot_pareto([(t.cost, t.p99_all) for t in results], front, best, scenario.slo_p99_s,
                out_dir / "pareto.png")  # fmt: skip
    click.echo(
        f"Pareto front only: the {len(front)} of {len(results)} trials that no other trial "
        f"beats on both cost and p99 (every trial: {out_dir / 'tune.json'})"
    )
    click.echo(_table({f"trial {t.index}": t.summary for t in (results[i] for i in front)}))
    if best is None:
        raise click.ClickException(
            f"no trial met the SLO (p99 <= {scenario.slo_p99_s:g} s over all arrivals); "
            f"see {out_dir / 'tune.json'}"
        )
    manifest = scoring_autoscaler(
        scenario, results[best].params, name=name or scenario.name, namespace=namespace
    )
    path = out_dir / "scoringautoscaler.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    chosen = results[best]
    click.echo(
        f"best: trial {chosen.index}, cost ${chosen.cost:.3f} "
        f"(baseline ${results[0].cost:.3f}, SLO "
        f"{'met' if results[0].summary['slo_met'] else 'missed'}), "
        f"p99 {chosen.p99_all:.3f} s; wrote {path}"
    )
