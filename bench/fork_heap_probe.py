"""Where a forked R worker's private memory comes from (issue 18), in one process.

    python -m bench.fork_heap_probe [--bundle examples/build/iris-rf] [--requests 2000]

Loads the bundle's model into R through rpy2 (as the zygote does), warms it, collects
garbage, forks, and in the child predicts one row `--requests` times, printing the
child's private and proportional memory (`/proc/self/smaps_rollup`) along the way,
then after glibc's `malloc_trim(0)`, and the mappings that hold most of its private
dirty pages. What it showed on iris-rf (2026-12-07): 2.0 MB private at the fork, 42.1
after 300 predictions, 45.5 after 2,000; `malloc_trim(0)` took back 15 of them (30.7);
26 MB of the rest is in the `[heap]` mapping: pages of the zygote's heap the child
wrote to, not freed memory glibc keeps. Prints only; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rscore.r_scorer.heap_trim import malloc_trim
from rscore.r_scorer.memory import read_process_memory

ROOT = Path(__file__).resolve().parent.parent


def memory_mb() -> tuple[float, float]:
    """(private, PSS) of this process in MB."""
    memory = read_process_memory(os.getpid())
    assert memory is not None  # this process is there
    return memory.private / 2**20, memory.pss / 2**20


def largest_private_mappings(count: int = 5) -> list[tuple[float, str]]:
    """The mappings with the most private dirty memory: (MB, mapping line)."""
    rows, mapping = [], ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            mapping = line.strip()
        elif head and head[0] == "Private_Dirty:":
            rows.append((int(head[1]) / 1024, mapping))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "examples" / "build" / "iris-rf")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    from rscore.r_scorer.bundle import read_bundle
    from rscore.r_scorer.prototype import TypedColumn, TypedFrame
    from rscore.r_scorer.rmodel import load_model

    model = load_model(read_bundle(args.bundle))
    row = TypedFrame(
        tuple(
            TypedColumn(c.name, c.kind, [c.levels[0]] if c.levels else [1.0])
            for c in model.prototype.columns
        ),
        1,
    )
    for _ in range(50):
        model.score(row)
    import rpy2.rinterface as ri

    ri.baseenv["gc"](full=True)
    trim = malloc_trim()
    assert trim is not None, "malloc_trim is glibc's"
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    private, pss = memory_mb()
    report = [f"at the fork: private {private:.1f} MB, PSS {pss:.1f} MB"]
    done = 0
    for target in sorted({min(300, args.requests), args.requests}):
        while done < target:
            model.score(row)
            done += 1
        private, pss = memory_mb()
        report.append(f"after {done} predictions: private {private:.1f} MB, PSS {pss:.1f} MB")
    trim()
    private, pss = memory_mb()
    report.append(f"after malloc_trim(0): private {private:.1f} MB, PSS {pss:.1f} MB")
    report += [f"  {mb:.1f} MB private dirty in {line}" for mb, line in largest_private_mappings()]
    print("\n".join(report), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
