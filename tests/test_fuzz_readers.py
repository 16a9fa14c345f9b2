"""Fuzzers of the readers of untrusted files: the .lpu reader (bit flips, truncations, and parts
replaced by mutated ones with the manifest's hashes fixed up, so the mutation reaches the program,
image and manifest checks and the interpreter) and the IR parser (mutated IR text). Each example
runs the CLI in-process and must end in success or in exit 2 with exactly one line on stderr,
never a traceback. Deterministic (derandomized), a few seconds each."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpuc.backends.lpu import PARTS, _pack, _unpack, sha256, write_lpu
from lpuc.compiler.cli import main
from lpuc.compiler.driver import compile_model
from lpuc.compiler.pipeline import CompileOptions

from helpers import SAMPLES

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _golden_modules() -> dict[str, str]:
    """The inputs of the golden IR files that are valid modules (not those expected to fail)."""
    seeds = {}
    for path in sorted((Path(__file__).parent / "golden" / "ir").glob("*.ir")):
        text, _, expected = path.read_text().partition("# ---- output ----")
        if not expected.lstrip().startswith("error:"):
            seeds[path.stem] = text
    return seeds


SEEDS = _golden_modules()

# What a mutation puts in place of a number: edges of every integer width a reader might use.
NUMBERS = ("0", "-1", "1", "-1000000", "320", "8193", "2147483648", "4294967296", "9223372036854775807",
           "9223372036854775808", "-9223372036854775809", "1" + "0" * 30, "1e308", "nan", "-0")
# Characters that matter to the grammar, or that no grammar expects.
CHARS = "[]{}()%@,=:\"#<>-.\n \t0123456789ae\\\x00\u00e9"


def lpuc(*argv) -> tuple[int, str]:
    """`lpuc ARGV` in-process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue()


def assert_success_or_one_line(code: int, err: str) -> None:
    if code == 0:
        return
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpuc: error: "), err


# A number as a whole token (an attribute value, a list item, a dim), not digits inside a name or hash.
NUMBER = re.compile(r"(?<![\w.%:\-])-?\d+(?![\w.])")


@st.composite
def mutated_text(draw, text: str) -> str:
    """`text` with a few edits: a number replaced by an edge value or by a deeply nested list, or all
    numbers after one key shifted (`cycle = N` -> N - 10^6), a character replaced or inserted, a span
    deleted or repeated."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("number", "number", "nest", "shift", "char", "insert", "delete", "repeat")))
        numbers = [m.span() for m in NUMBER.finditer(text)]
        if kind in ("number", "nest") and numbers:
            a, b = draw(st.sampled_from(numbers))
            depth = draw(st.sampled_from((2, 50, 101, 3000)))
            new = draw(st.sampled_from(NUMBERS)) if kind == "number" else "[" * depth + "1" + "]" * depth
            text = text[:a] + new + text[b:]
            continue
        if kind == "shift":
            keys = sorted(set(re.findall(r"\b([a-z_]+) = -?\d", text)))
            if keys:
                key, by = draw(st.sampled_from(keys)), draw(st.sampled_from((-10**6, -1, 1, 2**62)))
                text = re.sub(rf"\b{key} = (-?\d+)", lambda m: f"{key} = {int(m.group(1)) + by}", text)
            continue
        i = draw(st.integers(0, len(text)))
        if kind in ("char", "insert"):
            text = text[:i] + draw(st.sampled_from(CHARS)) + text[i + (kind == "char"):]
        elif kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        else:
            text = text[:i] + text[i:i + draw(st.integers(1, 80))] * 2 + text[i + 80:]
    return text


# --- the .lpu reader ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_lpu(tmp_path_factory) -> bytes:
    """A real sample compiled (list scheduler: quick), as .lpu bytes."""
    options = CompileOptions(scheduler="list")
    module, summary, machine_text = compile_model(SAMPLES / "gpt2_decode.onnx", options=options)
    path = tmp_path_factory.mktemp("lpu") / "gpt2_decode.lpu"
    write_lpu(path, module, machine_text, {"chips": 1}, summary.facts())
    return path.read_bytes()


def repacked(parts: dict[str, bytes]) -> bytes:
    """The .lpu of `parts` with the manifest's part hashes made to match (when it is still JSON)."""
    try:
        manifest = json.loads(parts["manifest.json"])
        manifest["parts"] = {k: sha256(v) for k, v in parts.items() if k != "manifest.json"}
        parts = {**parts, "manifest.json": json.dumps(manifest, sort_keys=True, indent=1).encode() + b"\n"}
    except (ValueError, TypeError, KeyError, RecursionError):  # no JSON object: the mutation stays as it is
        pass
    return _pack(parts)


@st.composite
def damaged_lpu(draw, good: bytes) -> bytes:
    kind = draw(st.sampled_from(("flip", "truncate", "part", "part", "part")))
    if kind == "flip":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "truncate":
        return good[:draw(st.integers(0, len(good) - 1))]
    parts = _unpack(good, "sample")
    name = draw(st.sampled_from(PARTS))
    if name == "image.bin":
        data = bytearray(parts[name])
        data[draw(st.integers(0, len(data) - 1))] ^= 0xFF
        parts[name] = bytes(data)
    else:
        parts[name] = draw(mutated_text(parts[name].decode())).encode("utf-8", "surrogatepass")
    return repacked(parts)


def test_damaged_lpu_files(sample_lpu, tmp_path):
    path = tmp_path / "damaged.lpu"

    @SETTINGS
    @given(damaged_lpu(sample_lpu))
    def run(data):
        path.write_bytes(data)
        assert_success_or_one_line(*lpuc("run", path, "--timing-only"))

    run()


# --- the IR parser -----------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_the_seed_texts_check(seed, tmp_path):
    path = tmp_path / "seed.ir"
    path.write_text(SEEDS[seed])
    assert lpuc("check", path)[0] == 0


def test_mutated_ir_text(tmp_path):
    path = tmp_path / "mutated.ir"
    @SETTINGS
    @given(st.sampled_from(sorted(SEEDS.values())).flatmap(mutated_text))
    def check(text):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        assert_success_or_one_line(*lpuc("check", path))

    check()
