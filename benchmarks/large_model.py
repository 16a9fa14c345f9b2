"""Large models: compile time and schedule of the Llama-2-7B shape at growing depth, and determinism.

    python benchmarks/large_model.py [--preset llama2-7b] [--layers 8,16,32] [--scheduler cpsat|list]
                                     [--determinism] [--keep DIR]

For each layer count, writes the shape-only model (samples/shape_only.py: the
real shapes, weights never read) and runs `lpuc compile --no-weights --json` on
it in a fresh process with the default options (default chip count, auto
partition, CP-SAT). The table gives chips, instructions, the list schedule's
and the final cycles, the solver's status, the wall-clock compile time, the time
per layer (flat when compile time grows linearly) and the compiler's peak RSS.

--determinism: compiles the smallest model twice more, with --workers 1 and 2
and other PYTHONHASHSEEDs (the table's run used 8 workers), and compares the
.lpu sha256 of all three.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samples import shape_only  # noqa: E402


def _compile(model: Path, out: Path, seed: str, workers: int, scheduler: str) -> tuple[dict, float, float]:
    """(the --json report, wall seconds, peak RSS in MB) of one compile in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--no-weights",
                        "--json", "--workers", str(workers), "--scheduler", scheduler],
                       cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"compile of {model} failed: {p.stderr.strip()}")
    # ru_maxrss of children is the largest child so far: a new maximum is this compile's
    rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return json.loads(p.stdout), seconds, rss


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llama2-7b", choices=sorted(shape_only.PRESETS))
    p.add_argument("--layers", default="8,16,32")
    p.add_argument("--scheduler", default="cpsat", choices=("cpsat", "list"))
    p.add_argument("--determinism", action="store_true")
    p.add_argument("--keep", type=Path, help="write the models and programs here (default: a temporary directory)")
    args = p.parse_args(argv)
    layer_counts = sorted(int(n) for n in args.layers.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        head = (f"{'layers':>6} {'chips':>5} {'instructions':>12} {'list cycles':>12} {'cycles':>12} "
                f"{'compile s':>9} {'s/layer':>7} {'RSS MB':>7}  solver")
        print(head)
        print("-" * len(head))
        for layers in layer_counts:
            model = work / f"{args.preset}_{layers}.onnx"
            shape_only.write(args.preset, model, layers=layers)
            report, seconds, rss = _compile(model, model.with_suffix(".lpu"), "0", 8, args.scheduler)
            print(f"{layers:>6} {report['chips']:>5} {report['instructions']:>12,} "
                  f"{report.get('list_cycles') or report['cycles']:>12,} {report['cycles']:>12,} {seconds:>9.1f} "
                  f"{seconds / layers:>7.1f} {rss:>7.0f}  {report.get('solver_status', '')}", flush=True)
            model.with_suffix(".weights").unlink()  # sparse, but a 32-layer file claims 13 GB
        if args.determinism:
            model = work / f"{args.preset}_{layer_counts[0]}.onnx"
            shape_only.write(args.preset, model, layers=layer_counts[0])
            shas = {}
            for seed, workers in (("0", 8), ("1", 1), ("12345", 2)):
                out = work / f"det_{workers}.lpu"
                shas[seed, workers] = _compile(model, out, seed, workers, args.scheduler)[0]["schedule_sha256"]
            print(f"\ndeterminism, {layer_counts[0]} layers:")
            for (seed, workers), sha in shas.items():
                print(f"  PYTHONHASHSEED={seed:<6} --workers {workers}: {sha}")
            same = len(set(shas.values())) == 1
            print("  identical" if same else "  DIFFERENT")
            return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
