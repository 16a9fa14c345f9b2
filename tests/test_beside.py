"""ir.beside: work done in a forked copy of the process gives what it gives here, whatever becomes of the
copy; and a .lpu verified beside the rest of its loading fails with the verifier's error."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from lpuc.backends.lpu import LpuFormatError, _pack, _unpack, load_lpu, sha256, write_lpu
from lpuc.ir import beside
from lpuc.ir.beside import Beside, alternately
from lpuc.ir.errors import LpucError
from test_lpu import MACHINE_TEXT, OPTIONS, sample_module

HERE = os.getpid()
forks = pytest.mark.skipif(not beside.FORK, reason="this platform runs the work here (ir.beside.FORK)")


def where() -> int:
    return os.getpid()


@forks
def test_the_work_runs_in_a_copy_and_gives_its_result():
    with Beside(lambda: (where(), list(range(5)))) as pending:
        pid, numbers = pending.result()
    assert pid != HERE and numbers == [0, 1, 2, 3, 4]


def test_an_lpuc_error_in_the_copy_is_raised_here():
    def fails():
        raise LpuFormatError(f"m.lpu: refused in {'a copy' if where() != HERE else 'here'}")
    with Beside(fails) as pending, pytest.raises(LpuFormatError, match="refused in a copy" if beside.FORK else ""):
        pending.result()


@pytest.mark.parametrize("how", ["raises", "is killed", "exits"])
def test_a_copy_that_fails_otherwise_is_done_here(how):
    def work():
        if where() != HERE:  # (only in the copy)
            if how == "raises":
                raise ValueError("a bug")
            if how == "is killed":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        return "done here"
    with Beside(work) as pending:
        assert pending.result() == "done here"


def test_without_forking_the_work_runs_here(monkeypatch):
    monkeypatch.setattr(beside, "FORK", False)
    assert Beside(where).result() == HERE
    assert list(alternately(lambda k: (k, where()), [1, 2, 3])) == [(1, HERE), (2, HERE), (3, HERE)]


def test_with_other_threads_running_the_work_runs_here():
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert Beside(where).result() == HERE
    finally:
        release.set()
        other.join()


@forks
def test_a_copy_not_waited_for_is_stopped():
    with Beside(lambda: threading.Event().wait()) as pending:  # (never ends)
        pid = pending._copy.pid
    with pytest.raises(ChildProcessError):  # reaped
        os.waitpid(pid, os.WNOHANG)


def test_alternately_gives_each_result_in_order():
    items = list(range(7))
    out = list(alternately(lambda k: (k * k, where()), items))
    assert [r for r, _ in out] == [k * k for k in items]
    assert {pid for _, pid in out[0::2]} == {HERE}
    others = {pid for _, pid in out[1::2]}  # (every second one in one copy, where this process forks)
    assert len(others) == 1 and (others != {HERE}) == beside.FORK


def test_alternately_raises_an_error_at_its_item():
    def work(k):
        if k == 3:
            raise LpucError("item 3 is refused")
        return k
    results = alternately(work, list(range(6)))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(LpucError, match="item 3 is refused"):
        next(results)


@forks
def test_alternately_stopped_early_stops_its_copy():
    results = alternately(lambda k: (k, where()), list(range(100)))
    assert next(results)[0] == 0
    _, pid = next(results)
    results.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_alternately_goes_on_here_when_its_copy_fails():
    def work(k):
        if where() != HERE and k >= 3:
            os._exit(1)
        return k
    assert list(alternately(work, list(range(8)))) == list(range(8))


@pytest.mark.parametrize("fork", [True, False])
@pytest.mark.parametrize("described", [True, False])
def test_a_program_failing_verification_gets_the_verifiers_error(tmp_path: Path, monkeypatch, fork, described):
    """Verified beside the rest of loading (and describing), as if first: when the rest fails too (here, the
    manifest names another machine), the verifier's error is the one raised."""
    monkeypatch.setattr(beside, "FORK", fork and beside.FORK)
    path = tmp_path / "m.lpu"
    write_lpu(path, sample_module(), MACHINE_TEXT, OPTIONS)
    parts = _unpack(path.read_bytes(), "m.lpu")
    text = parts["program.ir"].decode()
    line = next(line for line in text.splitlines() if line.strip().startswith("%b = vxm.add"))
    program = text.replace(line, line.replace(": f32[2,4]", ": f32[2,5]")).encode()
    manifest = json.loads(parts["manifest.json"])
    manifest["parts"]["program.ir"] = sha256(program)
    manifest["machine"] = "other"
    forged = _pack({**parts, "program.ir": program, "manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(LpuFormatError, match=r"^%b = vxm.add: result %b has type f32\[2,5\], expected f32\[2,4\]$"):
        load_lpu(forged, "m.lpu", described=described)
    manifest["parts"]["program.ir"] = sha256(parts["program.ir"])  # (the program as written: the manifest's error)
    with pytest.raises(LpuFormatError, match="the manifest names machine 'other'"):
        load_lpu(_pack({**parts, "manifest.json": json.dumps(manifest).encode()}), "m.lpu", described=described)


def test_a_described_program_has_its_facts(tmp_path: Path):
    path = tmp_path / "m.lpu"
    write_lpu(path, sample_module(), MACHINE_TEXT, OPTIONS)
    program = load_lpu(path.read_bytes(), described=True)
    assert "facts" in vars(program) and program.facts.instructions
