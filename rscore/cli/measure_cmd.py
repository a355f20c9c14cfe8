"""`rscore sim measure`: a bundle's call times on a real R worker, for the simulator.

    rscore sim measure BUNDLE --out DIR [--requests N] [--batch-sizes 1,2,...] [--rows-from F]

Times the calls (rscore/r_scorer/timing.py, beside the worker) and writes what the simulator
reads (rscore/sim/measure.py: the batch cost fit, service_times.txt, batch_cost.json,
service.toml). It lives here, not in rscore/sim/cli.py: the simulator never imports the
scorer. Writes only into --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["measure"]


def _batch_sizes(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if len(sizes) < 2 or sizes[0] < 1:
        raise click.BadParameter("give at least two different batch sizes, each >= 1")
    return sizes


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results (created if missing).",
)  # fmt: skip
@click.option("--requests", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Timed one-row calls (service_times.txt); each batch size gets a tenth "
                   "of this (at least 10).")  # fmt: skip
@click.option("--batch-sizes", default="1,2,4,8,16,32,64,128,256", show_default=True,
              callback=_batch_sizes, help="Rows per call for the batch cost fit.")  # fmt: skip
@click.option("--rows-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A request body (JSON, any /score format) whose rows are scored "
                   "[default: rows made from the model's input prototype].")  # fmt: skip
def measure(
    *,
    bundle: Path,
    out_dir: Path,
    requests: int,
    batch_sizes: tuple[int, ...],
    rows_from: Path | None,
) -> None:
    """Measure BUNDLE's call times on a real R worker for the simulator.

    Writes service_times.txt (one-row call times), batch_cost.json (the fit of call time
    on rows) and service.toml (a [service] table to paste into a scenario) into --out.
    """
    from tqdm import tqdm

    from rscore.r_scorer.timing import MeasureError, measure_bundle, total_calls
    from rscore.sim.measure import fit_measurement, summary_table, write_results

    total = total_calls(requests, batch_sizes)
    try:
        with tqdm(total=total, unit="call", desc="measure", delay=2.0, leave=False,
                  file=sys.stderr) as bar:  # fmt: skip

            def advance(calls: int) -> None:
                bar.update(calls)

            measurement = measure_bundle(
                bundle,
                requests=requests,
                batch_sizes=batch_sizes,
                rows_from=rows_from,
                worker_log=out_dir / "worker.log",
                progress=advance,
            )
    except MeasureError as exc:  # one line, even when R's own message has several
        raise click.ClickException(" ".join(str(exc).split())) from None
    fit = fit_measurement(measurement)
    paths = write_results(measurement, fit, out_dir)
    click.echo(summary_table(measurement, fit))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)
