"""What each precision gives and costs: every sample at fp32, fp16, int8 and fp8.

    python benchmarks/precision.py [--machine tsp-v1|FILE.toml] [--chips N] [--scheduler list|cpsat] [MODEL.onnx ...]

For each model (default: samples/*.onnx and samples/quantized/*.onnx, with their stored inputs) and
precision, from one compile (`--chips`, default 1) and one interpreter run:
  cycles      the schedule's length
  weights     the weights' SRAM bytes as stored, scales included (the compile summary's weight_bytes), and
              their share of the same weights as the model has them (fp32)
  image       every constant in SRAM (weights, biases, norms, the constants lowering adds), and its share
  chips       the fewest chips whose SRAM holds the program's constants (the default chip count)
  max rel     the interpreter's max relative error against the fp32 reference evaluator on the inputs
  top-1       for a model with `logits`: the share of positions whose largest logit is the reference's
A precision the machine lacks (fp8 on tsp-v1, whose MXM has no fp8 path) is listed as such. Compiles are
deterministic, so the numbers are too (no timings are printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lpuc  # noqa: E402
from lpuc.compiler.driver import load_model, precision_error  # noqa: E402
from lpuc.compiler.pipeline import default_chips, run_passes  # noqa: E402
from lpuc.compiler.precision import PRECISIONS, Precision  # noqa: E402
from lpuc.ir import LpucError  # noqa: E402
from lpuc.ir.machine import read_machine  # noqa: E402
from lpuc.ir.target import Target  # noqa: E402
from one_chip import _inputs  # noqa: E402  (the stored inputs beside a model, else seeded random ones)


def bench(path: Path, precision: str, machine: str, chips: int, scheduler: str) -> dict:
    desc = read_machine(machine)[0]
    graph = load_model(path)[0]
    try:
        program = lpuc.compile(path, machine, chips=chips, precision=precision, scheduler=scheduler)
    except LpucError as e:
        return {"error": str(e)}
    inputs = _inputs(path, graph)
    cost = precision_error(graph, lpuc.run(program, inputs).outputs, inputs)
    s = program.manifest["summary"]
    stored = run_passes(graph, Target(desc), (Precision(precision),))[0]
    return {"cycles": program.cycles, "weights": s["weight_bytes"], "model_weights": s["model_weight_bytes"],
            "image": s["sram_image_bytes"], "chips": default_chips(stored, desc), **cost}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--machine", default="tsp-v1")
    ap.add_argument("--chips", type=int, default=1)
    ap.add_argument("--scheduler", default="list", choices=("list", "cpsat"))
    args = ap.parse_args(argv)
    samples = ROOT / "samples"
    models = args.models or sorted(samples.glob("*.onnx")) + sorted((samples / "quantized").glob("*.onnx"))
    print(f"{'model':22} {'prec':5} {'cycles':>8} {'weights B':>11} {'share':>6} {'image B':>11} {'share':>6} "
          f"{'chips':>5} {'max rel':>9} {'top-1':>6}")
    for path in models:
        fp32_image = None
        for precision in PRECISIONS:
            r = bench(path, precision, args.machine, args.chips, args.scheduler)
            if "error" in r:
                print(f"{path.stem:22} {precision:5} {r['error']}")
                continue
            fp32_image = fp32_image or r["image"]
            top1 = f"{r['top1_agreement']:.1%}" if "top1_agreement" in r else "-"
            share = r["weights"] / r["model_weights"] if r["model_weights"] else 1.0
            print(f"{path.stem:22} {precision:5} {r['cycles']:8,} {r['weights']:11,} {share:6.3f} {r['image']:11,} "
                  f"{r['image'] / fp32_image:6.3f} {r['chips']:5} {r['max_relative_error']:9.2e} {top1:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
