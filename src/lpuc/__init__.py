"""lpuc: a static-scheduling compiler for LPU-style (Groq TSP) inference chips.

The public Python API. Everything else lives in `lpuc.ir` (the IR), `lpuc.compiler`
(frontend, passes, schedulers, CLI) and `lpuc.backends` (the executable schedule, the
interpreter, the viewers)::

    import lpuc
    program = lpuc.compile("model.onnx", chips=4)        # a Program (what `lpuc compile` writes)
    result = lpuc.run(program, {"input_ids": ids})       # outputs and statistics
    lpuc.verify("model.onnx", repeat=3)                  # determinism verdict
    step, prefill = lpuc.compile_generation("decode.onnx", "prefill.onnx", chips=4)  # the KV cache resident
    lpuc.generate(step, prompt, 16, prefill).tokens      # greedy tokens, ttft_us, tokens_per_s, ...
    rows = lpuc.sweep("decode.onnx", chips=[1, 2, 4], precisions=["fp16", "int8"], cache=lpuc.cache_dir())
"""

from .backends.interpreter import run
from .backends.lpu import Program, read_lpu
from .compiler.driver import compile_program as compile
from .compiler.generate import compile_generation, generate
from .compiler.cache import cache_dir
from .compiler.pipeline import CompileOptions
from .compiler.sweep import sweep
from .compiler.verify import assert_deterministic, verify_determinism as verify
from .ir.errors import LpucError

__all__ = ["CompileOptions", "LpucError", "Program", "assert_deterministic", "cache_dir", "compile",
           "compile_generation", "generate", "read_lpu", "run", "sweep", "verify"]
