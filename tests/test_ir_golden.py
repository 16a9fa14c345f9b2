"""Golden IR tests: tests/golden/ir/*.ir.

A golden file's first line names the passes to run, in order, as a pipeline:

    # RUN: verify
    # RUN: partition chips=4 strategy=pipeline | verify      (a pass with options)

The rest of the file is the expected output. When the input is not already the
expected output (comments, odd spacing ...), the file holds the input first and
the expected output after a separator line:

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

from collections.abc import Callable
from pathlib import Path

import pytest

from lpuc.compiler.partition import partition
from lpuc.ir import LpucError, Module, parse, print_module
from lpuc.ir.machine import read_machine
from lpuc.ir.verifier import verify

GOLDEN = Path(__file__).parent / "golden" / "ir"
RUN = "# RUN:"
SEPARATOR = "# ---- output ----"

# Pass name -> function(module, **options) -> module. A later pass (lower, ...)
# is added here by name; options are `key=value` words.
PASSES: dict[str, Callable[..., Module]] = {
    "verify": lambda module: verify(module),
    "partition": lambda module, chips, strategy, machine="tsp-v1":
        partition(module, read_machine(machine)[0], chips, strategy),
}


def parse_pipeline(line: str) -> list[tuple[str, dict]]:
    """`# RUN: a | b k=v` -> [("a", {}), ("b", {"k": "v"})]."""
    assert line.startswith(RUN), f"the first line must be `{RUN} pass | pass ...`, got {line!r}"
    stages = []
    for stage in line[len(RUN):].split("|"):
        name, *words = stage.split()
        if name not in PASSES:
            raise AssertionError(f"unknown pass {name!r} (known: {', '.join(sorted(PASSES))})")
        options = {}
        for w in words:
            key, _, value = w.partition("=")
            options[key] = int(value) if value.lstrip("-").isdigit() else value
        stages.append((name, options))
    return stages


def split_golden(text: str) -> tuple[str, str, str | None]:
    """(RUN line, input, expected output or None when the input is the expected output)."""
    run, _, body = text.partition("\n")
    lines = body.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.rstrip("\n") == SEPARATOR:
            return run, "".join(lines[:i]), "".join(lines[i + 1:])
    return run, body, None


def run_pipeline(run_line: str, text: str, filename: str) -> str:
    try:
        module = parse(text, filename)
        for name, options in parse_pipeline(run_line):
            module = PASSES[name](module, **options)
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
    assert parse_pipeline("# RUN: verify") == [("verify", {})]
    assert parse_pipeline("# RUN: verify | verify") == [("verify", {}), ("verify", {})]
    assert parse_pipeline("# RUN: partition chips=4 strategy=pipeline") == [
        ("partition", {"chips": 4, "strategy": "pipeline"})]
    with pytest.raises(AssertionError, match="unknown pass 'lower'"):
        parse_pipeline("# RUN: lower machine=tsp-v1")
    with pytest.raises(AssertionError, match="first line"):
        parse_pipeline("module @m {")


def test_a_failing_pass_is_golden_output_too():
    text = "module @m {\n  input %x : f32[2]\n  %y = graph.exp %x : f32[3]\n  output \"y\" = %y\n}\n"
    out = run_pipeline("# RUN: verify", text, "bad.ir")
    assert out == "error: %y = graph.exp: result %y has type f32[3], expected f32[2]\n"
