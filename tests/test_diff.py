"""`lpuc diff A.lpu B.lpu`: hand-made pairs of one small sample's schedule (list scheduler) that differ in one
known way each, and the diff names that way: an option, the machine, one moved instruction, a renamed one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lpuc.backends.diff import _compare, diff_programs
from lpuc.backends.lpu import build_program, read_lpu, write_lpu
from lpuc.compiler.driver import compile_model, lpu_options
from lpuc.compiler.pipeline import CompileOptions
from lpuc.ir.attributes import AttrDict
from lpuc.ir.core import Op, Value
from lpuc.ir.machine import read_machine

from helpers import SAMPLES, assert_one_line_error, run_cli

SAMPLE = SAMPLES / "gpt2_prefill.onnx"
INPUTS = SAMPLES / "gpt2_prefill.inputs.npz"


def _compile(path, **options):
    """Compile the sample with the list scheduler and write it; (module, machine text, options, summary facts)."""
    opts = CompileOptions(scheduler="list", **options)
    module, summary, machine_text = compile_model(SAMPLE, "tsp-v1", opts)
    parts = (module, machine_text, lpu_options(opts), summary.facts())
    write_lpu(path, *parts)
    return parts


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The sample's schedule, written once: (path, its parts)."""
    path = tmp_path_factory.mktemp("diff") / "base.lpu"
    return path, _compile(path)


def _diff(capsys, a, b, *more):
    return run_cli(capsys, "diff", a, b, *more)


def test_identical_files(base, tmp_path, capsys):
    path, _ = base
    copy = shutil.copy(path, tmp_path / "copy.lpu")
    code, out, err = _diff(capsys, path, copy)
    assert code == 0, err
    assert "identical" in out
    d = diff_programs(read_lpu(path), read_lpu(copy))
    assert d.identical and d.first_difference() == "no difference"


def test_option_change(base, tmp_path, capsys):
    path, _ = base
    other = tmp_path / "rounds0.lpu"
    _compile(other, rounds=0)
    code, out, _ = _diff(capsys, path, other)
    assert code == 1
    assert "option rounds: 2 -> 0" in out
    assert diff_programs(read_lpu(path), read_lpu(other)).first_difference() == "option rounds: 2 -> 0"


def _moved(module, index, by):
    """`module` with its `index`-th op issued `by` cycles later (not hazard-checked: a diff needs no valid
    schedule)."""
    op = module.ops[index]
    moved = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "cycle": op.attrs["cycle"] + by}))
    return module.replace(ops=module.ops[:index] + (moved,) + module.ops[index + 1:])


def _vxm_ops(module):
    return [k for k, op in enumerate(module.ops) if op.name.startswith("vxm.")]


def test_one_moved_instruction(base, tmp_path, capsys):
    path, (module, machine_text, options, summary) = base
    index = _vxm_ops(module)[len(_vxm_ops(module)) // 2]
    op = module.ops[index]
    other = tmp_path / "moved.lpu"
    write_lpu(other, _moved(module, index, 7), machine_text, options, summary)
    line = f"instruction %{op.results[0].name} ({op.name}, chip 0): cycle {op.attrs['cycle']} -> " \
           f"{op.attrs['cycle'] + 7}"
    code, out, _ = _diff(capsys, path, other)
    assert code == 1
    assert line in out
    assert f"{op.name} 1 moved" in out and "1 moved, 0 changed, 0 added, 0 removed" in out
    d = diff_programs(read_lpu(path), read_lpu(other))
    assert d.first_difference() == line
    assert not d.changes or all(c.section == "summary" for c in d.changes)

    code, out, _ = _diff(capsys, path, other, "--json")
    report = json.loads(out)
    assert code == 1 and report["identical"] is False and report["first_difference"] == line
    assert report["instructions"]["moved"] == 1
    assert report["instructions"]["listed"][0]["fields"]["cycle"] == {"before": op.attrs["cycle"],
                                                                      "after": op.attrs["cycle"] + 7}


def test_first_difference_is_the_earliest_and_limit_hides_the_rest(base, capsys, tmp_path):
    path, (module, machine_text, options, summary) = base
    early, late = _vxm_ops(module)[1], _vxm_ops(module)[-2]
    other = tmp_path / "two.lpu"
    write_lpu(other, _moved(_moved(module, late, 3), early, 5), machine_text, options, summary)
    d = diff_programs(read_lpu(path), read_lpu(other))
    assert [i.name for i in d.instructions] == [f"%{module.ops[k].results[0].name}" for k in (early, late)]
    assert f"%{module.ops[early].results[0].name} " in d.first_difference()
    code, out, _ = _diff(capsys, path, other, "--limit", "1")
    assert code == 1 and "... and 1 more" in out


def test_renamed_instruction_is_removed_and_added(base):
    """A result renamed: the old name is only in A, the new one only in B (matched by name)."""
    _, (module, machine_text, options, summary) = base
    index, op = next((k, op) for k, op in enumerate(module.ops) if op.name == "host.output")
    renamed = Value(op.results[0].name + "_renamed", op.results[0].type)
    ops = module.ops[:index] + (Op(op.name, op.operands, (renamed,), op.attrs),) + module.ops[index + 1:]
    outputs = tuple((n, renamed if v == op.results[0] else v) for n, v in module.outputs)
    a = build_program(module, machine_text, options, summary)
    b = build_program(module.replace(ops=ops, outputs=outputs), machine_text, options, summary)
    d = diff_programs(a, b)
    assert sorted((i.status, i.name) for i in d.instructions) == [("added", f"%{renamed.name}"),
                                                                   ("removed", f"%{op.results[0].name}")]
    assert any(c.key.startswith("output ") for c in d.changes)


def test_machine_change(base, tmp_path, capsys):
    path, _ = base
    _, text = read_machine("tsp-v1")
    assert "\nclock_mhz = 900 " in text and "\nvxm = 8\n" in text
    toml = tmp_path / "faster.toml"
    toml.write_text(text.replace("\nclock_mhz = 900 ", "\nclock_mhz = 1000 ").replace("\nvxm = 8\n", "\nvxm = 9\n"))
    other = tmp_path / "faster.lpu"
    code, _, err = run_cli(capsys, "compile", SAMPLE, "-o", other, "--machine", toml, "--scheduler", "list")
    assert code == 0, err
    code, out, _ = _diff(capsys, path, other)
    assert code == 1
    assert "machine clock_mhz: 900 -> 1000" in out and "machine latency.vxm: 8 -> 9" in out


def test_machine_text_only(base):
    """The same settings in another text: the diff says the file differs, not which key."""
    _, (module, machine_text, options, summary) = base
    a = build_program(module, machine_text, options, summary)
    b = build_program(module, machine_text + "# a comment\n", options, summary)
    assert diff_programs(a, b).first_difference() == "machine.toml differs (the same settings: only comments or " \
                                                     "layout)"


def test_outputs_of_identical_programs(base, capsys):
    path, _ = base
    code, out, err = _diff(capsys, path, path, "--inputs", INPUTS)
    assert code == 0, err
    assert "logits: bitwise identical" in out


@pytest.mark.parametrize("x, y, bitwise, worst", [
    ([1.0, np.nan, np.inf], [1.0, np.nan, np.inf], True, 0.0),
    ([1.0, 2.0], [1.0, 2.5], False, 0.5),
    ([1.0, np.nan], [1.0, 3.0], False, np.inf),
])
def test_output_comparison(x, y, bitwise, worst):
    d = _compare("y", np.asarray(x, np.float32), np.asarray(y, np.float32))
    assert (d.bitwise_identical, d.max_abs_diff) == (bitwise, worst)


def _damaged(tmp, path):
    data = path.read_bytes()
    (tmp / "damaged.lpu").write_bytes(data[: len(data) // 2])
    return tmp / "damaged.lpu"


BAD = {
    "missing": (lambda tmp, path: [tmp / "nowhere.lpu", path], ["nowhere.lpu", "no such file"]),
    "not-lpu": (lambda tmp, path: [path, _text(tmp / "notes.lpu")], ["notes.lpu", "not a valid .lpu"]),
    "damaged": (lambda tmp, path: [_damaged(tmp, path), path], ["damaged.lpu"]),
    "bad-npz": (lambda tmp, path: [path, path, "--inputs", _text(tmp / "in.npz")], ["in.npz", ".npz"]),
    "wrong-inputs": (lambda tmp, path: [path, path, "--inputs", _npz(tmp / "w.npz")], ["missing input"]),
    "negative-limit": (lambda tmp, path: [path, path, "--limit", "-1"], ["--limit -1"]),
}


def _text(path):
    path.write_text("this is not what it says\n")
    return path


def _npz(path):
    np.savez(path, x=np.zeros(3, np.float32))
    return path


@pytest.mark.parametrize("case", BAD)
def test_bad_input(base, tmp_path, capsys, case):
    make, words = BAD[case]
    code, out, err = run_cli(capsys, "diff", *make(tmp_path, base[0]))
    assert_one_line_error(code, err, *words)
    assert out == ""
