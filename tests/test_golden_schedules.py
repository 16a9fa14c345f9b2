"""Golden schedules: tests/golden/schedules.json.

Per bundled sample and chip count (1 and 4) the record holds what the default
options produce, as `lpuc compile MODEL -o X.lpu [--chips 4]` writes it: the
.lpu file's sha256, the cycles and the lower bound. A change anywhere in the
compiler that moves a schedule shows up here as a reviewable diff, with the
cycles it gained or lost, instead of going unnoticed.

`pytest tests/test_golden_schedules.py --update-golden` rewrites the record from
what the code produces now (review the diff before committing it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpuc.backends.lpu import lpu_bytes, sha256
from lpuc.compiler.driver import compile_model, lpu_options
from lpuc.compiler.pipeline import CompileOptions

from helpers import SAMPLES, compiled_sample

RECORD = Path(__file__).parent / "golden" / "schedules.json"
CHIPS = (1, 4)
CASES = [(path.stem, chips) for path in sorted(SAMPLES.glob("*.onnx")) for chips in CHIPS]
REGENERATE = "pytest tests/test_golden_schedules.py --update-golden (review the diff of tests/golden/schedules.json)"


def key(name: str, chips: int) -> str:
    return f"{name} x{chips}"


def cli_options(chips: int) -> CompileOptions:
    """The options `lpuc compile` passes: without --chips the chip count is left to the compiler (None)."""
    return CompileOptions(chips=None if chips == 1 else chips)


def compile_case(name: str, chips: int) -> dict:
    """The record of one case, from the .lpu bytes exactly as the CLI writes them. One chip reuses the
    session's shared compile (same default options) so the suite does not compile it twice."""
    options = cli_options(chips)
    if chips == 1:
        module, summary, machine_text = compiled_sample(name)
    else:
        module, summary, machine_text = compile_model(SAMPLES / f"{name}.onnx", options=options)
    assert summary.chips == chips, f"{key(name, chips)}: compiled for {summary.chips} chips"
    data = lpu_bytes(module, machine_text, lpu_options(options), summary.facts())
    return {"cycles": summary.cycles, "lower_bound_cycles": summary.lower_bound, "schedule_sha256": sha256(data)}


def load() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def save(records: dict) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


def describe(case: str, want: dict | None, got: dict) -> str:
    """Which fields moved, expected -> got; cycles with the change in cycles and percent."""
    if want is None:
        return f"{case}: not in {RECORD.name} (got {json.dumps(got, sort_keys=True)})"
    lines = [f"{case}: the schedule moved (expected -> got)"]
    for field in sorted(set(want) | set(got)):
        a, b = want.get(field), got.get(field)
        if a == b:
            lines.append(f"  {field}: {a} (same)")
        elif field == "cycles" and isinstance(a, int) and isinstance(b, int):
            pct = f", {(b - a) / a:+.2%}" if a else ""
            lines.append(f"  {field}: {a} -> {b} ({b - a:+d} cycles{pct})")
        else:
            lines.append(f"  {field}: {a} -> {b}")
    return "\n".join(lines)


@pytest.mark.parametrize("name,chips", CASES, ids=[f"{n}-x{c}" for n, c in CASES])
def test_golden_schedule(name: str, chips: int, update_golden: bool):
    case, got = key(name, chips), compile_case(name, chips)
    if update_golden:  # read-modify-write: pytest runs the cases one after another
        save({**load(), case: got})
        return
    want = load().get(case)
    assert want == got, f"{describe(case, want, got)}\nif the change is intended, regenerate: {REGENERATE}"


def test_record_has_exactly_the_cases(update_golden: bool):
    """No stale entries (a removed sample) and none missing; --update-golden drops the stale ones."""
    expected = {key(n, c) for n, c in CASES}
    records = load()
    if update_golden:
        save({k: v for k, v in records.items() if k in expected})
        return
    stale, missing = sorted(set(records) - expected), sorted(expected - set(records))
    assert not stale and not missing, f"stale: {stale}, missing: {missing}; regenerate: {REGENERATE}"
    assert RECORD.read_text() == json.dumps(records, indent=1, sort_keys=True) + "\n", \
        f"{RECORD.name} is not in canonical form (sorted keys, indent 1); regenerate: {REGENERATE}"
