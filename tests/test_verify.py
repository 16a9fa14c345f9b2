"""`lpuc verify` and the Python API behind it: determinism is checked, and a planted source of
nondeterminism is caught and named."""

from __future__ import annotations

import json
import textwrap

import pytest

from lpuc.compiler.verify import assert_deterministic, verify_determinism

from helpers import SAMPLES, assert_one_line_error, run_cli

SAMPLE = SAMPLES / "gpt2_prefill.onnx"

# A bug of the kind determinism tests exist for: ties between equal list-scheduling priorities broken
# by the iteration order of a set of strings, which follows PYTHONHASHSEED. Loaded into every fresh
# compile process through sitecustomize.
PLANTED = textwrap.dedent('''
    import lpuc.compiler.schedule_list as schedule_list

    _priorities = schedule_list._priorities

    def _planted(program, n_ops):
        prio = _priorities(program, n_ops)
        order = {name: k for k, name in enumerate({f"op{i}" for i in range(n_ops)})}
        return [p * n_ops + order[f"op{i}"] for i, p in enumerate(prio)]

    schedule_list._priorities = _planted
''')


def test_verify_passes_on_a_sample(capsys, tmp_path):
    code, out, err = run_cli(capsys, "verify", SAMPLE, "--repeat", "2", "--workers", "1,8", "--json")
    assert code == 0, err
    verdict = json.loads(out)
    assert verdict["deterministic"] and verdict["divergence"] == ""
    assert [c["workers"] for c in verdict["compiles"]] == [1, 8]
    assert [c["seed"] for c in verdict["compiles"]] == ["0", "1"]
    assert len({c["sha256"] for c in verdict["compiles"]}) == 1
    assert len(verdict["runs"]) == 4 and len({r["outputs_sha256"] for r in verdict["runs"]}) == 1


def test_the_python_api(tmp_path):
    verdict = assert_deterministic(SAMPLE, repeat=2, workers=(2,), scheduler="list", chips=2, keep=tmp_path)
    assert verdict.deterministic and {c.cycles for c in verdict.compiles} == {r.cycles for r in verdict.runs}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2_prefill.1.lpu", "gpt2_prefill.2.lpu"]
    assert "deterministic" in verdict.lines()[-1]


def test_planted_nondeterminism_is_caught(tmp_path, monkeypatch, capsys):
    (tmp_path / "sitecustomize.py").write_text(PLANTED)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    verdict = verify_determinism(SAMPLE, repeat=3, workers=(2,), scheduler="list")
    assert not verdict.deterministic
    assert "PYTHONHASHSEED=1" in verdict.divergence and "instruction %" in verdict.divergence, verdict.divergence
    with pytest.raises(AssertionError, match="NOT deterministic"):
        assert_deterministic(SAMPLE, repeat=2, workers=(2,), scheduler="list")
    code, out, err = run_cli(capsys, "verify", SAMPLE, "--repeat", "2", "--scheduler", "list")
    assert code == 1 and "NOT deterministic" in out and "instruction %" in out


@pytest.mark.parametrize("argv,words", [
    (["nowhere.onnx"], ["nowhere.onnx", "no such file"]),
    ([str(SAMPLE), "--repeat", "1"], ["--repeat", "at least 2"]),
    ([str(SAMPLE), "--workers", "0,2"], ["--workers", "1,2,8"]),
    ([str(SAMPLE), "--chips", "0"], ["--chips", "at least 1"]),
])
def test_bad_input(argv, words, capsys):
    code, out, err = run_cli(capsys, "verify", *argv)
    assert_one_line_error(code, err, *words)
    assert not out
