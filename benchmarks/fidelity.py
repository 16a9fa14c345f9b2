"""Fidelity: lpuc's predictions against Groq's published figures, on full-size shape-only models.

    python benchmarks/fidelity.py [--only bert-base,llama2-7b,llama2-70b,mixtral-8x7b] [--machine M] [--keep DIR]

Each row writes the model from shapes alone (samples/shape_only.py, samples/shape_only_bert.py: the real
shapes, weights never read), compiles it with `lpuc compile --no-weights --json` in a fresh process at int8
(the chip's integer path) on tsp-v1, with the published chip count and lpuc's default layout, then with
`--layout tp=8,pp=<chips/8>` (tensor parallel over a node, pipeline across nodes) where the chips make whole
nodes, and at the alternatives a row names (Mixtral: `ep=8`, an expert per chip), and runs each program
with `lpuc run --timing-only` (every hazard checked). A decode step keeps its KV cache resident (--state
auto). The table gives the layout, the chips, what lpuc predicts (latency or tokens/s at batch 1), the
published figure, predicted / published, the compile and run wall times, the gap of the schedule to its
lower bound, and in the note the physical bound (each stage's MXM work, the exchanges inside stages and the
hand-offs: compiler/serving.py) and a decode step's aggregate tokens/s served pipelined. A model lpuc cannot
yet build or compile gets its row with why.

Published figures (Groq; see docs/design.md, "Serving LLMs"): BERT-base, 128 tokens, one chip: 130 us.
Llama-2 7B decode at 2048 context: 750 tokens/s (taken as one rack, 72 chips). Llama-2 70B decode at 4096
context: about 300 tokens/s on about 576 chips. Mixtral 8x7B decode: about 480 tokens/s (576 chips).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samples import shape_only, shape_only_bert  # noqa: E402


@dataclass(frozen=True)
class Target:
    name: str
    published: float        # us (latency) or tokens/s
    unit: str               # "us" or "tok/s"
    chips: int
    write: object           # (path) -> None: the shape-only model, or None: no builder yet
    decode: bool = True
    alternatives: tuple[str, ...] = ()  # more layouts to measure beside the default and tp=8 over nodes


TARGETS = (
    Target("bert-base", 130.0, "us", 1, lambda out: shape_only_bert.write(out, seq=128), decode=False),
    Target("llama2-7b", 750.0, "tok/s", 72, lambda out: shape_only.write("llama2-7b", out, mode="decode", past=2047)),
    Target("llama2-70b", 300.0, "tok/s", 576,
           lambda out: shape_only.write("llama2-70b", out, mode="decode", past=4095)),
    Target("mixtral-8x7b", 480.0, "tok/s", 576,
           lambda out: shape_only.write("mixtral-8x7b", out, mode="decode", past=4095),
           alternatives=("tp=8,pp=72,ep=8",)),  # each chip of a node holding one expert whole
)


def _lpuc(*args: str) -> tuple[dict | None, str, float]:
    """(the --json report or None, the error line, wall seconds) of one lpuc command in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lpuc.compiler", *args, "--json"], cwd=ROOT, capture_output=True,
                       text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        return None, (p.stderr.strip().splitlines() or ["failed"])[-1].removeprefix("lpuc: error: "), seconds
    return json.loads(p.stdout), "", seconds


def _predicted(target: Target, report: dict) -> float:
    return report["tokens_per_s"] if target.unit == "tok/s" else report["latency_us"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated rows: " + ",".join(t.name for t in TARGETS))
    p.add_argument("--keep", type=Path, help="write the models and programs here (default: a temporary directory)")
    p.add_argument("--machine", default="tsp-v1", help="the machine (a shipped name or a TOML file; default tsp-v1): "
                                                       "what-if machines for calibration")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else [t.name for t in TARGETS]
    unknown = sorted(set(names) - {t.name for t in TARGETS})
    if unknown:
        p.error(f"unknown rows {', '.join(unknown)}")
    head = (f"{'model':<13} {'layout':<16} {'chips':>5} {'predicted':>12} {'published':>12} {'pred/pub':>8} "
            f"{'compile s':>9} {'run s':>6} {'gap':>6}  note")
    print(f"{args.machine}, int8, batch 1; load average {os.getloadavg()[0]:.1f}")
    print(head, flush=True)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for target in (t for t in TARGETS if t.name in names):
            published = f"{target.published:,.0f} {target.unit}"
            if target.write is None:
                print(f"{target.name:<13} {'-':<12} {target.chips:>5} {'-':>12} {published:>12} {'-':>8} "
                      f"{'-':>9} {'-':>6} {'-':>6}  no shape-only builder yet", flush=True)
                continue
            model = work / f"{target.name}.onnx"
            target.write(model)
            layouts = [None]
            if target.chips % 8 == 0 and target.chips > 8:
                layouts.append(f"tp=8,pp={target.chips // 8}")
            layouts += target.alternatives
            chosen = None
            for layout in layouts:
                if layout is not None and layout == chosen:
                    print(f"{target.name:<13} {layout:<16} {target.chips:>5} {'(the default: above)':>12}", flush=True)
                    continue
                program = work / f"{target.name}{'_' + layout.replace(',', '_') if layout else ''}.lpu"
                options = ["--no-weights", "--no-cache", "--precision", "int8", "--chips", str(target.chips), "--machine",
                           str(Path(args.machine).resolve()) if args.machine.endswith(".toml") else args.machine]
                options += ["--state", "auto"] if target.decode else []
                options += ["--layout", layout] if layout else []
                report, error, seconds = _lpuc("compile", str(model), "-o", str(program), *options)
                if report is None:
                    print(f"{target.name:<13} {layout or 'default':<16} {target.chips:>5} {'-':>12} {published:>12} "
                          f"{'-':>8} {seconds:>9.1f} {'-':>6} {'-':>6}  does not compile: {error}", flush=True)
                    continue
                chosen = chosen or report["partition"]
                run, error, run_seconds = _lpuc("run", str(program), "--timing-only")
                predicted = _predicted(target, report)
                served = run.get("pipelined") if run else None
                physical = run["physical_bound"] if run else None
                note = f"{report['partition']}" + (
                    f"; physical bound {physical['physical_bound_cycles']:,} cycles (the schedule +{physical['gap']:.0%})"
                    if physical else "") + (
                    f"; pipelined at most {served['aggregate_tokens_per_s']:,.0f} tok/s, {served['in_flight']} in flight"
                    if served else "")
                if run is None:
                    note = f"run failed: {error}"
                elif run["cycles"] != report["cycles"]:
                    note = f"run took {run['cycles']:,} cycles, the schedule {report['cycles']:,}"
                print(f"{target.name:<13} {layout or 'default':<16} {target.chips:>5} "
                      f"{f'{predicted:,.1f} {target.unit}':>12} {published:>12} {predicted / target.published:>8.3f} "
                      f"{seconds:>9.1f} {run_seconds:>6.1f} {report['gap']:>6.1%}  {note}", flush=True)
                program.unlink(missing_ok=True)
            model.with_suffix(".weights").unlink(missing_ok=True)  # sparse, but it claims the model's size
    return 0


if __name__ == "__main__":
    sys.exit(main())
