"""Golden IR tests: tests/golden/ir/*.ir.

A golden file's first line names the passes to run, in order, as a pipeline
(`lpuc.compiler.pipeline.PASSES` names every pass; options are `key=value`
words, as `str(pass)` spells them), on a tsp-v1 target:

    # RUN: verify
    # RUN: partition chips=2 strategy=tensor | lower | allocate | schedule-list rounds=0

The verifier runs after every pass, as in the compiler. The rest of the file is
the expected output. When the input is not already the expected output
(comments, odd spacing, a pass that changes the module ...), the file holds the
input first and the expected output after a separator line:

    # RUN: verify
    module @m { ... input as written ... }
    # ---- output ----
    module @m { ... canonical text ... }

Without a separator the body is both the input and the expected output, so the
test also proves `print(parse(text)) == text`. When a pass fails with a user
error, the output is `error: <message>`.

`pytest --update-golden` rewrites the expected outputs from what the passes
produce now (review the diff).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lpuc.compiler.allocate import Allocate
from lpuc.compiler.lower import Lower
from lpuc.compiler.partition import Partition
from lpuc.compiler.passes import Verify
from lpuc.compiler.pipeline import PASSES, parse_passes, run_passes
from lpuc.compiler.schedule_cpsat import CpSatScheduler
from lpuc.compiler.schedule_list import ListScheduler
from lpuc.ir import LpucError, parse, print_module
from lpuc.ir.machine import load_machine
from lpuc.ir.target import Target

GOLDEN = Path(__file__).parent / "golden" / "ir"
RUN = "# RUN:"
SEPARATOR = "# ---- output ----"
TARGET = Target(load_machine("tsp-v1"))


def parse_pipeline(line: str):
    """`# RUN: a | b k=v` -> the passes."""
    assert line.startswith(RUN), f"the first line must be `{RUN} pass | pass ...`, got {line!r}"
    return parse_passes(line[len(RUN):])


def split_golden(text: str) -> tuple[str, str, str | None]:
    """(RUN line, input, expected output or None when the input is the expected output)."""
    run, _, body = text.partition("\n")
    lines = body.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.rstrip("\n") == SEPARATOR:
            return run, "".join(lines[:i]), "".join(lines[i + 1:])
    return run, body, None


def run_pipeline(run_line: str, text: str, filename: str) -> str:
    pipeline = parse_pipeline(run_line)
    try:
        module, _ = run_passes(parse(text, filename), TARGET, pipeline)
    except LpucError as e:
        return f"error: {e}\n"
    return print_module(module)


def golden_files() -> list[Path]:
    return sorted(GOLDEN.glob("*.ir"))


def test_golden_files_exist():
    names = {p.stem for p in golden_files()}
    assert {"attention", "layernorm_mlp", "data_movement", "topk", "constants", "module_attrs",
            "comments_and_spacing", "partition_pipeline", "partition_tensor", "partition_bad_chip"} <= names


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_golden(path: Path, update_golden: bool):
    run_line, source, expected = split_golden(path.read_text())
    actual = run_pipeline(run_line, source, path.name)
    if update_golden:
        if expected is None and actual != source:  # keep the input, add the output after it
            path.write_text(f"{run_line}\n{source}{SEPARATOR}\n{actual}")
        elif expected is not None:
            path.write_text(f"{run_line}\n{source}{SEPARATOR}\n{actual}")
        return
    want = source if expected is None else expected
    assert actual == want, f"{path.name}: output differs (run pytest --update-golden to accept, then review)"
    if not actual.startswith("error:"):
        module = parse(actual)
        assert print_module(module) == actual  # print(parse(text)) == text
        assert parse(print_module(module)) == module  # parse(print(m)) == m
        assert hash(parse(actual)) == hash(module)


def test_pipeline_syntax():
    assert parse_pipeline("# RUN: verify") == (Verify(),)
    assert parse_pipeline("# RUN: partition chips=4 strategy=tensor | lower | allocate stripes=None | schedule-cpsat "
                          "effort=0.5") == (Partition(chips=4, strategy="tensor"), Lower(), Allocate(),
                                            CpSatScheduler(effort=0.5))
    for bad, words in (("# RUN: optimize", "unknown pass 'optimize'"), ("# RUN: partition chip=2", "no option 'chip'"),
                       ("# RUN: allocate stripes=many", "allocate stripes='many'"), ("# RUN: verify |", "unknown pass ''")):
        with pytest.raises(LpucError, match=words):
            parse_pipeline(bad)
    with pytest.raises(AssertionError, match="first line"):
        parse_pipeline("module @m {")


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_is_spelled_as_it_parses(name):
    """str(pass) is its pipeline text, options included, for every pass the compiler has."""
    cls = PASSES[name]
    assert cls.name == name and parse_passes(str(cls())) == (cls(),) and str(cls()) == name
    changed = {Partition: Partition(chips=4, strategy="tensor"), Allocate: Allocate(stripes=2),
               ListScheduler: ListScheduler(rounds=0),
               CpSatScheduler: CpSatScheduler(effort=0.25, workers=2, rounds=1, window=40, max_windows=3)}
    if cls in changed:
        assert parse_passes(str(changed[cls])) == (changed[cls],)
        assert str(changed[cls]).startswith(f"{name} ") and "=" in str(changed[cls])


def test_a_failing_pass_is_golden_output_too():
    text = "module @m {\n  input %x : f32[2]\n  %y = graph.exp %x : f32[3]\n  output \"y\" = %y\n}\n"
    out = run_pipeline("# RUN: verify", text, "bad.ir")
    assert out == "error: %y = graph.exp: result %y has type f32[3], expected f32[2]\n"
