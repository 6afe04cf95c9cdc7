"""The suite's time budget fails a whole run that takes too long, and judges nothing else."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture
def suite(tmp_path):
    """A two-test suite that takes about 0.2 s, under a budget of 0.1 s, with the real plugin."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
                                            'suite_budget_minutes = "0.0017"\n')
    (tmp_path / "tests" / "conftest.py").write_text("from suite_budget import pytest_addoption, pytest_sessionfinish\n")
    (tmp_path / "tests" / "test_slow.py").write_text("import time\n\ndef test_a():\n    time.sleep(0.2)\n\n"
                                                    "def test_b():\n    pass\n")
    return tmp_path


def pytest_in(folder, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_whole_run_over_its_budget_fails_and_says_what_to_do(suite):
    result = pytest_in(suite)
    assert result.returncode == 1, result.stdout
    assert "2 passed" in result.stdout
    assert "over its budget of 0.0017 min (pyproject.toml suite_budget_minutes)" in result.stdout, result.stdout


@pytest.mark.parametrize("selection", [["-k", "test_a"], ["tests/test_slow.py"], ["-m", "not slow"]])
def test_a_selection_is_never_judged(suite, selection):
    result = pytest_in(suite, *selection)
    assert result.returncode == 0 and "suite budget" not in result.stdout, result.stdout


def test_a_run_within_budget_passes_and_prints_its_share(suite):
    (suite / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
                                         'suite_budget_minutes = "5"\n')
    result = pytest_in(suite)
    assert result.returncode == 0 and "suite budget: 0.0 of 5 min" in result.stdout, result.stdout
