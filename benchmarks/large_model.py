"""Large models: compile time, memory and schedule of Llama-2 shapes at growing depth, and determinism.

    python benchmarks/large_model.py [--preset llama2-7b|llama2-70b] [--mode decode|prefill]
                                     [--context 2048] [--seq 32] [--layers 8,16,32] [--scheduler cpsat|list]
                                     [--precision fp16|int8|...] [--machine tsp-v1]
                                     [--partition auto|pipeline|tensor] [--determinism]
                                     [--keep DIR]

For each layer count, writes the shape-only model (samples/shape_only.py: the
real shapes, weights never read; decode: one token after context - 1 cached
ones; prefill: --seq tokens) and runs `lpuc compile --no-weights --json` on it
in a fresh process with the default options (default chip count, auto
partition, CP-SAT; repeated layers are scheduled from templates,
compiler/templates.py). The table gives chips, instructions, the cycles, the
lower bound, the gap and what binds, the wall-clock and CPU compile time (the
CPU time is what a loaded machine does not inflate), the CPU time per layer
(falling when compile time grows less than linearly), the compiler's peak
RSS, the size of the .lpu (each repeated piece written once: ir/pieces.py) and
the CPU time of `lpuc run --timing-only` of the program (loading the .lpu,
checking every hazard), then how the scheduler went (templates: how many for how many pieces, a
layer's part on each chip, and the cycles lost at their boundaries). Llama-2-70B at its chip count needs a
machine with that many chips: --machine tests/machines/tsp-v1-torus.toml (at int8, --precision int8: 352
chips at 80 layers).

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


def _compile(model: Path, out: Path, seed: str, workers: int, scheduler: str, machine: str, partition: str,
             precision: str) -> tuple[dict, float, float, float]:
    """(the --json report, wall seconds, CPU seconds, peak RSS in MB) of one compile in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--no-weights",
                        "--no-cache", "--json", "--workers", str(workers), "--scheduler", scheduler, "--machine", machine,
                        "--partition", partition, "--precision", precision],
                       cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"compile of {model} failed: {p.stderr.strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # ru_maxrss of children is the largest child so far: a new maximum is this compile's
    rss = max(before.ru_maxrss, after.ru_maxrss) / 1024
    return json.loads(p.stdout), seconds, cpu, rss


def _timing_run(program: Path) -> float:
    """CPU seconds of `lpuc run --timing-only` of `program` in a fresh process (after its compile: a larger
    compile follows, so the compiles' peak RSS stays theirs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-m", "lpuc.compiler", "run", str(program), "--timing-only"], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"run of {program} failed: {p.stderr.strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="llama2-7b", choices=sorted(shape_only.PRESETS))
    p.add_argument("--mode", default="decode", choices=("decode", "prefill"))
    p.add_argument("--context", type=int, default=2048, help="decode: tokens in context (cached + the new one)")
    p.add_argument("--seq", type=int, default=32, help="prefill: prompt tokens")
    p.add_argument("--layers", default="8,16,32")
    p.add_argument("--scheduler", default="cpsat", choices=("cpsat", "list"))
    p.add_argument("--precision", default="fp16", help="the weights' precision (lpuc compile --precision)")
    p.add_argument("--machine", default="tsp-v1")
    p.add_argument("--partition", default="auto", choices=("auto", "pipeline", "tensor"))
    p.add_argument("--determinism", action="store_true")
    p.add_argument("--keep", type=Path, help="write the models and programs here (default: a temporary directory)")
    args = p.parse_args(argv)
    layer_counts = sorted(int(n) for n in args.layers.split(","))
    shape = dict(mode=args.mode, seq=args.seq, past=args.context - 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{args.preset} {args.mode} ({f'context {args.context}' if args.mode == 'decode' else f'{args.seq} tokens'}),"
              f" {args.machine}, --partition {args.partition} --scheduler {args.scheduler} --precision {args.precision}; load average {os.getloadavg()[0]:.1f}")
        head = (f"{'layers':>6} {'chips':>5} {'instructions':>12} {'cycles':>12} {'bound':>12} {'gap':>6} "
                f"{'wall s':>7} {'CPU s':>7} {'CPU s/layer':>11} {'RSS MB':>7} {'.lpu MB':>7} {'run s':>6}  "
                "bound from; scheduler")
        print(head)
        print("-" * len(head))
        for layers in layer_counts:
            model = work / f"{args.preset}_{args.mode}_{layers}.onnx"
            shape_only.write(args.preset, model, layers=layers, **shape)
            report, seconds, cpu, rss = _compile(model, model.with_suffix(".lpu"), "0", 8, args.scheduler,
                                                 args.machine, args.partition, args.precision)
            run_cpu = _timing_run(model.with_suffix(".lpu"))
            print(f"{layers:>6} {report['chips']:>5} {report['instructions']:>12,} {report['cycles']:>12,} "
                  f"{report['lower_bound_cycles']:>12,} {report['gap']:>6.1%} {seconds:>7.1f} {cpu:>7.1f} "
                  f"{cpu / layers:>11.2f} {rss:>7.0f} {model.with_suffix('.lpu').stat().st_size / 1e6:>7.1f} "
                  f"{run_cpu:>6.1f}  {report['bound']}; "
                  f"{report.get('solver_status', '')}", flush=True)
            model.with_suffix(".weights").unlink()  # sparse, but a 32-layer file claims 13 GB
        if args.determinism:
            model = work / f"{args.preset}_{args.mode}_{layer_counts[0]}.onnx"
            shape_only.write(args.preset, model, layers=layer_counts[0], **shape)
            shas = {}
            for seed, workers in (("0", 8), ("1", 1), ("12345", 2)):
                out = work / f"det_{workers}.lpu"
                shas[seed, workers] = _compile(model, out, seed, workers, args.scheduler, args.machine,
                                               args.partition, args.precision)[0]["schedule_sha256"]
            print(f"\ndeterminism, {layer_counts[0]} layers:")
            for (seed, workers), sha in shas.items():
                print(f"  PYTHONHASHSEED={seed:<6} --workers {workers}: {sha}")
            same = len(set(shas.values())) == 1
            print("  identical" if same else "  DIFFERENT")
            return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
