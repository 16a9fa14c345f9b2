"""Determinism, checked: the same model and options must give the same program, the same cycles and
the same output bits -- across runs, processes, hash seeds and solver thread counts.

`verify_determinism` compiles a model `repeat` times, each in a fresh process (`python -m compiler
compile --no-cache`: a program from the build cache would prove nothing) under another PYTHONHASHSEED and
another `--workers` count, then runs every program `repeat`
times on the interpreter with the same inputs. The first compile and its first run are the reference;
the first thing that differs from them is the verdict's `divergence` (for programs: the first differing
instruction, from `backends.diff`). `lpuc verify` prints it; tests call it directly (see the README).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir import LpucError
from ..ir.files import read_npz

@dataclass(frozen=True)
class Compiled:
    """One compile in a fresh process."""
    seed: str            # its PYTHONHASHSEED
    workers: int
    sha256: str          # of the .lpu bytes
    cycles: int
    path: str            # the .lpu it wrote


@dataclass(frozen=True)
class Ran:
    """One run of compile `compile` on the interpreter."""
    compile: int
    cycles: int
    outputs_sha256: str  # of every output's name, dtype, shape and bytes, in order


@dataclass(frozen=True)
class Verdict:
    model: str
    compiles: tuple[Compiled, ...]
    runs: tuple[Ran, ...]
    divergence: str = ""                 # the first difference ("" when deterministic)
    options: Mapping = field(default_factory=dict)

    @property
    def deterministic(self) -> bool:
        return not self.divergence

    def lines(self) -> list[str]:
        """A short verdict table."""
        out = [f"{'compile':>7}  {'PYTHONHASHSEED':>14}  {'workers':>7}  {'cycles':>10}  schedule sha256"]
        for k, c in enumerate(self.compiles, 1):
            out.append(f"{k:>7}  {c.seed:>14}  {c.workers:>7}  {c.cycles:>10,}  {c.sha256}")
        outputs = sorted({r.outputs_sha256 for r in self.runs})
        out.append(f"runs: {len(self.runs)} ({len(self.runs) // max(1, len(self.compiles))} of each program); "
                   f"cycles {'/'.join(f'{c:,}' for c in sorted({r.cycles for r in self.runs}))}; "
                   f"outputs sha256 {', '.join(o[:16] for o in outputs)}")
        out.append("deterministic: the same bytes, cycles and output bits every time" if self.deterministic
                   else f"NOT deterministic: {self.divergence}")
        return out

    def facts(self) -> dict:
        return {"model": self.model, "deterministic": self.deterministic, "divergence": self.divergence,
                "options": dict(self.options),
                "compiles": [c.__dict__ for c in self.compiles], "runs": [r.__dict__ for r in self.runs]}


def outputs_sha256(outputs: Mapping[str, np.ndarray]) -> str:
    """A digest of outputs down to the bit: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in outputs:
        a = np.ascontiguousarray(outputs[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _compile_args(options: Mapping) -> list[str]:
    args = []
    for key, value in options.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _compile(model: Path, out: Path, seed: str, workers: int, options: Mapping) -> Compiled:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    p = subprocess.run([sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--json",
                        "--no-cache", "--workers", str(workers), *_compile_args(options)],
                       env=env, capture_output=True, text=True)
    if p.returncode:
        lines = p.stderr.strip().splitlines()
        raise LpucError(f"compiling {model} failed: {lines[-1] if lines else f'exit {p.returncode}'}")
    report = json.loads(p.stdout)
    return Compiled(seed, workers, report["schedule_sha256"], report["cycles"], str(out))


def verify_determinism(model: str | Path, *, repeat: int = 3, workers: Sequence[int] = (1, 2, 8),
                       inputs: Mapping[str, np.ndarray] | str | Path | None = None, keep: str | Path | None = None,
                       progress=None, **options) -> Verdict:
    """Compile `model` `repeat` times in fresh processes (PYTHONHASHSEED 0, 1, 2, ...; --workers cycling
    through `workers`) and run each program `repeat` times. `options` are `lpuc compile` options
    (chips=4, scheduler="list", machine="FILE.toml", ...). `inputs`: arrays or an .npz (default: the
    model's `.inputs.npz` beside it, else seeded random inputs). `keep`: a directory for the programs."""
    from ..backends import interpreter
    from ..backends.diff import diff_programs
    from ..backends.lpu import read_lpu

    from .inputs import random_inputs

    model = Path(model)
    if not model.is_file():
        raise LpucError(f"{model}: no such file")
    if repeat < 2:
        raise LpucError(f"--repeat {repeat}: verifying determinism needs at least 2 compiles")
    if not workers or min(workers) < 1:
        raise LpucError("--workers: give one or more thread counts, each at least 1 (e.g. 1,2,8)")
    say = progress or (lambda line: None)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        compiles = []
        for k in range(repeat):
            w = workers[k % len(workers)]
            say(f"compile {k + 1} of {repeat} (PYTHONHASHSEED={k}, --workers {w})")
            compiles.append(_compile(model, where / f"{model.stem}.{k + 1}.lpu", str(k), w, options))
        programs = [read_lpu(c.path) for c in compiles]
        if inputs is None:
            stored = model.with_name(model.name.removesuffix(model.suffix) + ".inputs.npz")
            # (a stateful program's inputs are a step's, not the stored ones of the model with its cache)
            inputs = read_npz(stored, "inputs", programs[0].module) \
                if stored.is_file() and "position" not in programs[0].module.attrs else random_inputs(programs[0].module)
        elif not isinstance(inputs, Mapping):
            inputs = read_npz(inputs, "inputs", programs[0].module)
        runs, divergence = [], ""
        for k, c in enumerate(compiles[1:], 2):
            if c.sha256 != compiles[0].sha256 and not divergence:
                first = diff_programs(programs[0], programs[k - 1]).first_difference()
                divergence = (f"compile {k} (PYTHONHASHSEED={c.seed}, --workers {c.workers}) gives other bytes "
                              f"than compile 1: {first}")
        for k, program in enumerate(programs):
            for r in range(repeat):
                say(f"run {r + 1} of {repeat} of program {k + 1}")
                cycles, digest = _run(program, inputs)
                runs.append(Ran(k + 1, cycles, digest))
        reference = runs[0]
        for r in runs[1:]:
            if divergence:
                break
            if r.cycles != reference.cycles:
                divergence = f"a run of program {r.compile} took {r.cycles:,} cycles, the first {reference.cycles:,}"
            elif r.outputs_sha256 != reference.outputs_sha256:
                divergence = f"a run of program {r.compile} gave other output bits than the first run"
    return Verdict(str(model), tuple(compiles), tuple(runs), divergence, dict(options))


STATE_STEPS = 4  # a stateful program runs as a generation of this many steps (at most its context)


def _run(program, inputs) -> tuple[int, str]:
    """(cycles, outputs sha256) of one run; a stateful program's run is the first steps of a new generation
    (a fresh state; each step's inputs at its position), its digest over every step's outputs."""
    from ..backends import interpreter
    from ..backends.state import State, step_positions
    from ..ir.machine_ops import is_state

    from .inputs import step_inputs

    rows = step_positions(program.module)
    if rows is None:
        result = interpreter.run(program, inputs)
        return result.stats.cycles, outputs_sha256(result.outputs)
    state, digests = State(), []
    context = min(op.result.type.shape[-2] for op in program.module.ops if is_state(op.name))
    for position in range(0, min(STATE_STEPS * rows, context - rows + 1), rows):
        result = interpreter.run(program, step_inputs(program.module, inputs, position), state=state)
        digests.append(outputs_sha256(result.outputs))
    return result.stats.cycles, hashlib.sha256("".join(digests).encode()).hexdigest()


def assert_deterministic(model: str | Path, **kwargs) -> Verdict:
    """`verify_determinism`, raising AssertionError (with the verdict table) when anything differs."""
    verdict = verify_determinism(model, **kwargs)
    if not verdict.deterministic:
        raise AssertionError("\n".join(verdict.lines()))
    return verdict


__all__ = ["Verdict", "assert_deterministic", "outputs_sha256", "verify_determinism"]
