"""Generation as an LPU runs it: the KV cache resident in SRAM, token by token.

`compile_generation` compiles a decode step (and its prefill partner) with their Hugging Face
past/present pairs as resident state (compiler/frontend/state.py), the prefill keeping every
state where the decode step keeps it. `generate` feeds the prompt — through the prefill
program when there is one (a shorter prompt padded at its end with mask 0: causal attention
keeps the padding out of the real rows, and decode steps overwrite its slots; a longer one's
rest through decode steps), else token by token through the decode step — then generates
greedily, the argmax taken on the host. Per step only the token id, the position, the mask and
the logits cross the host; the cache stays in the programs' shared `State`.

Timing comes from the exact schedules: a static step takes the same cycles every time, so a
generation's times are the programs' cycles (host I/O included) times their counts, and a
timing-only generation runs each program once (every hazard checked) rather than once per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends import interpreter
from ..backends.lpu import Program, read_lpu
from ..backends.state import State, step_positions
from ..ir import LpucError
from ..ir.machine_ops import is_state

from .driver import compile_program
from .frontend.state import POSITION

IDS, MASK = "input_ids", "attention_mask"


@dataclass(frozen=True)
class Generation:
    tokens: np.ndarray            # int64 [1, N], the new token ids (timing-only: empty)
    prompt_tokens: int
    context: int                  # the cache's slots
    chips: int
    prefill_cycles: int           # 0: no prefill program
    decode_cycles: int            # one decode step, host I/O included
    ttft_cycles: int              # until the first new token: the prompt's programs
    host_bytes_per_token: int     # bytes a decode step moves across the host
    clock_mhz: float

    @property
    def ttft_us(self) -> float:
        return self.ttft_cycles / self.clock_mhz

    @property
    def per_token_us(self) -> float:
        return self.decode_cycles / self.clock_mhz

    @property
    def tokens_per_s(self) -> float:
        return 1e6 / self.per_token_us if self.decode_cycles else 0.0

    def report(self) -> dict:
        return {"tokens": self.tokens.tolist(), "prompt_tokens": self.prompt_tokens,
                "new_tokens": int(self.tokens.shape[-1]) if self.tokens.size else 0, "context": self.context,
                "chips": self.chips, "ttft_us": round(self.ttft_us, 3), "per_token_us": round(self.per_token_us, 3),
                "tokens_per_s": round(self.tokens_per_s, 3), "host_bytes_per_token": self.host_bytes_per_token,
                "prefill_cycles": self.prefill_cycles, "decode_cycles": self.decode_cycles}


def state_layout(program: Program) -> dict[str, tuple[int, tuple]]:
    """Where a stateful program keeps each state: name -> (chip, extents)."""
    return {op.attrs["name"]: (op.attrs.get("chip", 0), op.attrs["out"]) for op in program.module.ops
            if is_state(op.name)}


def step_tokens_per_s(program: Program) -> float | None:
    """A decode step's tokens per second (one token per run), or None for a program that is not one (no
    state, or a step taking more than one position)."""
    if step_positions(program.module) != 1 or not program.cycles:
        return None
    return program.machine.clock_mhz * 1e6 / program.cycles


def load_step(path: str | Path, machine, weights: bool, states=None, **options) -> Program:
    """A stateful program: a .lpu as compiled, or a model compiled with its cache resident (where `states`,
    a partner's state_layout, keeps it, when given)."""
    if Path(path).suffix == ".lpu":
        program = read_lpu(path)
        if step_positions(program.module) is None:
            raise LpucError(f"{path} has no resident state: compile it with --state auto (or give the model)")
        return program
    return compile_program(path, machine, weights=weights, state_layout=states, state="auto", **options)


def compile_generation(decode: str | Path, prefill: str | Path | None = None, machine="tsp-v1", *,
                       weights: bool = True, **options) -> tuple[Program, Program | None]:
    """The decode step and its prefill partner, sharing the cache's layout. `options`: CompileOptions fields."""
    step = load_step(decode, machine, weights, **options)
    first = None
    if prefill is not None:
        context = state_context(step)
        chosen = step.manifest.get("summary", {}).get("partition", "")
        if chosen.startswith(("tp=", "pp=")):  # the prefill is laid out as the step is (auto, or by default)
            options = {**options, "layout": chosen, "partition": "auto", "chips": None}
        first = load_step(prefill, machine, weights, state_layout(step),
                          **({"context": context} if Path(prefill).suffix != ".lpu" else {}), **options)
        if state_layout(first) != state_layout(step):
            raise LpucError(f"{prefill} keeps its cache elsewhere than {decode}: compile them together "
                            "(give the models, not .lpu files compiled apart)")
        if first.target.chips != step.target.chips:
            raise LpucError(f"{prefill} is for {first.target.chips} chips, {decode} for {step.target.chips}")
    return step, first


def state_context(step: Program) -> int:
    """The rows of a stateful program's resident cache (its context)."""
    return next(op.result.type.shape[-2] for op in step.module.ops if is_state(op.name))


def generate(step: Program, prompt: np.ndarray, tokens: int, prefill: Program | None = None, *,
             timing_only: bool = False, state: State | None = None) -> Generation:
    """Feed `prompt` (int [1, L]) and generate `tokens` new ids greedily, on a new generation in `state`
    (default: a fresh one)."""
    if step_positions(step.module) != 1:
        raise LpucError("the decode program takes more than one position per step: give the decode step first "
                        "and the prefill with --prefill")
    prompt = np.asarray(prompt)
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[0] != 1 or prompt.shape[1] < 1 or prompt.dtype.kind not in "iu":
        raise LpucError(f"the prompt must be token ids, int [1, L] with L >= 1, got {prompt.dtype}{list(prompt.shape)}")
    if tokens < 1:
        raise LpucError(f"--tokens {tokens}: generate at least one token")
    context, length = state_context(step), prompt.shape[1]
    if length + tokens > context:
        raise LpucError(f"the prompt ({length} tokens) and {tokens} new tokens need {length + tokens} slots; the "
                        f"cache holds {context} (the decode graph's context): export it with a longer context")
    vocab = step.module.outputs[0][1].type.shape[-1]
    if prompt.min() < 0 or prompt.max() >= vocab:
        raise LpucError(f"the prompt holds token ids outside the vocabulary 0..{vocab - 1}")
    p_rows = step_positions(prefill.module) if prefill is not None else 0
    through_prefill = min(length, p_rows)
    prefill_cycles = prefill.cycles if prefill is not None else 0
    ttft = prefill_cycles + (length - through_prefill) * step.cycles
    if timing_only:
        stats = interpreter.run(step, timing_only=True, state=State()).stats
        if prefill is not None:
            interpreter.run(prefill, timing_only=True, state=State())
        out = np.zeros((1, 0), np.int64)
    else:
        state = State() if state is None else state
        state.reset()
        logits = stats = None
        if prefill is not None:
            logits = _run(prefill, state, prompt[:, :through_prefill], 0, p_rows)[:, through_prefill - 1]
        for pos in range(through_prefill, length):
            logits, stats = _step(step, state, int(prompt[0, pos]), pos)
        new = []
        for k in range(tokens):
            new.append(int(np.argmax(logits.reshape(-1, vocab)[-1])))
            if k < tokens - 1:
                logits, stats = _step(step, state, new[-1], length + k)
        if stats is None:  # no decode step ran: its statistics from a timed run
            stats = interpreter.run(step, timing_only=True, state=State()).stats
        out = np.asarray([new], np.int64)
    return Generation(out, length, context, step.target.chips, prefill_cycles, step.cycles, ttft, stats.host_bytes,
                      step.machine.clock_mhz)


def _inputs(program: Program, ids: np.ndarray, start: int, rows: int) -> dict[str, np.ndarray]:
    """A step's host inputs: `ids` at positions start.. (padded to `rows` with id 0, mask 0), the mask
    admitting slots 0 .. start + len(ids) - 1."""
    types = {v.name: v.type for v in program.module.inputs}
    missing = [n for n in (IDS, MASK, POSITION) if n not in types]
    extra = [n for n in types if n not in (IDS, MASK, POSITION)]
    if missing or extra:
        raise LpucError(f"a generation step takes {IDS}, {MASK} and {POSITION} only; module @{program.module.name} "
                        f"takes {', '.join(types)}")
    n = ids.shape[1]
    padded = np.zeros((1, rows), types[IDS].dtype.numpy)
    padded[0, :n] = ids[0]
    mask = np.zeros(types[MASK].shape, types[MASK].dtype.numpy)
    mask[..., :start + n] = 1
    position = np.arange(start, start + rows, dtype=types[POSITION].dtype.numpy).reshape(types[POSITION].shape)
    return {IDS: padded.reshape(types[IDS].shape), MASK: mask, POSITION: position}


def _run(program: Program, state: State, ids: np.ndarray, start: int, rows: int):
    result = interpreter.run(program, _inputs(program, ids, start, rows), state=state)
    return next(iter(result.outputs.values())).reshape(1, rows, -1)


def _step(step: Program, state: State, token: int, pos: int):
    result = interpreter.run(step, _inputs(step, np.asarray([[token]]), pos, 1), state=state)
    return next(iter(result.outputs.values())), result.stats
