"""pytest options shared by the test suite.

`--update-golden`: rewrite the expected output of the golden files
(tests/golden/**) from what the code produces now, instead of comparing.
Review the diff before committing it.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the expected output of tests/golden files instead of checking it")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture(autouse=True, scope="session")
def _build_cache(tmp_path_factory):
    """No build cache for the suite (a test compiling twice must compile twice), unless a test names one
    (--cache-dir, `cache=`); and never the user's (~/.cache/lpuc)."""
    import os

    os.environ["LPUC_CACHE_DIR"] = str(tmp_path_factory.mktemp("lpuc-cache"))
    os.environ["LPUC_NO_CACHE"] = "1"
    yield
