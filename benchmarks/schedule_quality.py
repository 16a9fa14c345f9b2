"""Schedule quality: the list scheduler against CP-SAT on every sample at 1, 2, 4 and 8 chips.

    python benchmarks/schedule_quality.py [--chips 1,2,4,8] [--effort E] [--workers N] [MODEL.onnx ...]

Per model and chip count (auto partition, chosen by the list scheduler's quick
schedules), the list schedule's cycles, CP-SAT's (warm-started from it), the
lower bound (max of critical path, per-resource work / capacity and CP-SAT's
proven bound), the gap cycles / bound - 1, the solver's status and wall-clock
seconds (compile included). The geometric mean of cycles / bound closes the
table.

Each case above a 10% gap is then solved again with ten times the effort, to say
why the gap is there. When the longer solve proves an optimum, that splits the
gap exactly: the schedule's part above it, the bound's part below. Otherwise
"schedule" when it closes at least half the gap (the default budget stopped
short), "weak bound" when it raises the bound, else "most likely the bound",
with the share of the gap it closed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpuc.compiler.driver import load_model  # noqa: E402
from lpuc.compiler.pipeline import CompileOptions, compile_module  # noqa: E402
from lpuc.ir.machine import read_machine  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--chips", default="1,2,4,8")
    p.add_argument("--effort", type=float, default=CompileOptions.effort)
    p.add_argument("--workers", type=int, default=CompileOptions.workers)
    args = p.parse_args(argv)
    models = args.models or sorted((ROOT / "samples").glob("*.onnx"))
    machine, _ = read_machine("tsp-v1")
    head = f"{'model':<22} {'chips':>5} {'list':>9} {'cpsat':>9} {'bound':>9} {'gap':>7} {'status':>9} {'s':>6}"
    print(head)
    print("-" * len(head))
    ratios, open_cases = [], []
    for path in models:
        graph, _ = load_model(path)
        for n in (int(c) for c in args.chips.split(",")):
            t0 = time.perf_counter()
            _, s = compile_module(graph, machine, CompileOptions(chips=n, scheduler="cpsat", effort=args.effort,
                                                                 workers=args.workers))
            seconds = time.perf_counter() - t0
            ratios.append(s.cycles / s.lower_bound)
            print(f"{path.stem:<22} {n:>5} {s.list_cycles:>9,} {s.cycles:>9,} {s.lower_bound:>9,} {s.gap:>6.1%} "
                  f"{s.solver_status.split(':')[0]:>9} {seconds:>6.1f}", flush=True)
            if s.gap > 0.10:
                open_cases.append((path.stem, n, graph, s))
    print(f"\ngeomean cycles / bound: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} over {len(ratios)}")
    if open_cases:
        print(f"\ncases above a 10% gap, solved again with ten times the effort ({10 * args.effort:g}):")
    for name, n, graph, s in open_cases:
        _, longer = compile_module(graph, machine, CompileOptions(chips=n, scheduler="cpsat", effort=10 * args.effort,
                                                                  workers=args.workers))
        closed = (s.cycles - longer.cycles) / (s.cycles - s.lower_bound)   # of the gap, by the longer solve
        if longer.cycles <= longer.lower_bound:   # the optimum, proven: it splits the gap exactly
            reason = (f"optimum {longer.cycles:,} proven: the schedule was {s.cycles - longer.cycles:,} cycles above "
                      f"it (schedule), the bound {longer.cycles - s.lower_bound:,} below (weak bound)")
        elif closed >= 0.5:
            reason = f"schedule: {longer.cycles:,} cycles found ({closed:.0%} of the gap closed)"
        elif longer.lower_bound > s.lower_bound:
            reason = f"weak bound: it rose to {longer.lower_bound:,}; {closed:.0%} of the gap closed"
        else:
            reason = (f"most likely the bound: ten times the effort closes {closed:.2%} of the gap "
                      f"({longer.cycles:,} cycles) and proves nothing more")
        print(f"  {name} x{n}: gap {s.gap:.1%} (bound from {s.bound}) -> {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
