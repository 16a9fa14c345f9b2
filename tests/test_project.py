"""The project's own promises: the README's test command is what CI runs; the README and docs stand alone."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    assert len(blocks) == 2, "the README gives exactly two set-up commands"
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, ".ci/run must run the README's test command verbatim"


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYSTEM_PATHS = ("/dev/", "/proc/", "/tmp/", "/usr/", "/etc/")  # on every machine, e.g. `/dev/zero` as an example


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_reference_nothing_outside_the_repository(doc):
    """A user who clones lpuc has the repository only: every relative link and `../` path of the README and
    docs/ resolves inside it (and exists), and no absolute path of some machine is named (a system path any
    machine has may be)."""
    text = doc.read_text()
    relative = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)
                if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    relative += re.findall(r"(?<![\w.])(?:\.\./)+[\w./-]*", text)
    for target in relative:
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name} names {target}, not in the repository"
    absolute = [p for p in re.findall(r"(?<![\w:/.~-])(?:~|/[A-Za-z_][\w.-]*)/[\w./-]+", text)
                if not p.startswith(SYSTEM_PATHS)]
    assert not absolute, f"{doc.name} names paths outside the repository: {absolute}"
