"""The suite's time budget (issue 15): a whole run of the suite that takes longer than
`suite_budget_minutes` (pyproject.toml) fails, so CI's time cannot creep past its target
unnoticed. Only a whole run counts: a selection (-k, -m, paths, --lf) is never judged, and
neither is a run that failed anyway."""

from __future__ import annotations

import time

import pytest

STARTED = time.monotonic()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("suite_budget_minutes", "wall-clock minutes a whole run of the suite may take (0: no budget)",
                  default="0")


def whole_suite(config: pytest.Config) -> bool:
    option = config.option
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS and not option.keyword
            and not option.markexpr and not getattr(option, "lf", False) and not option.deselect)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    budget = float(session.config.getini("suite_budget_minutes"))
    if not budget or exitstatus != 0 or hasattr(session.config, "workerinput") or not whole_suite(session.config):
        return
    minutes = (time.monotonic() - STARTED) / 60
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if minutes > budget:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter.write_line(f"suite budget: the whole suite took {minutes:.1f} min, over its budget of {budget:g} min "
                            "(pyproject.toml suite_budget_minutes): make the new tests cheaper (shared fixtures, "
                            "smaller shapes) before raising it", red=True)
    else:
        reporter.write_line(f"suite budget: {minutes:.1f} of {budget:g} min")
