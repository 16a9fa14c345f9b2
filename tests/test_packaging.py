"""The wheel: one import name, `lpuc`, and `lpuc demo` runs from it in a fresh venv.

The venv borrows the dependencies of the interpreter running the tests (a .pth file naming
its site-packages: nothing is downloaded again) but not its editable lpuc, whose finder only
a site-packages directory of its own would load: the lpuc that runs is the wheel's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from helpers import ROOT

# what a checkout holds beside the sources: never part of a build
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".deps", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", "lpuc-demo")


def test_wheel_installs_and_runs_the_demo(tmp_path):
    src = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", src],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("lpuc-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
    assert tops == {"lpuc", wheel.name.split("-py")[0] + ".dist-info"}, f"top-level names in the wheel: {tops}"

    env_dir = tmp_path / "venv"
    venv.create(env_dir)  # without pip: this interpreter's pip installs into it
    python = env_dir / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    borrowed = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(own) / "test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(borrowed)))
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                    wheel], check=True, capture_output=True)

    cwd = tmp_path / "elsewhere"  # nothing of the checkout on sys.path
    cwd.mkdir()
    where = subprocess.run([python, "-c", "import lpuc; print(lpuc.__file__)"], cwd=cwd, check=True,
                           capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(env_dir), f"lpuc imported from {where}, not from the wheel"
    demo = subprocess.run([env_dir / "bin" / "lpuc", "demo", "--out-dir", "out"], cwd=cwd, capture_output=True,
                          text=True)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "(OK," in demo.stdout and (cwd / "out" / "report.html").is_file()
