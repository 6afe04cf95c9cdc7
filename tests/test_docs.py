"""The documents stay true to the code: the fault catalogue cites tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_fault_catalogue_has_its_cases_and_each_cited_test_exists():
    text = (REPO / "docs" / "faults.md").read_text()
    cases = re.findall(r"^\| (\d+) \|", text, flags=re.M)
    assert [int(n) for n in cases] == list(range(1, len(cases) + 1)) and len(cases) >= 35
    defined = {name for file in (REPO / "tests").glob("test_*.py")
               for name in re.findall(r"^def (test_\w+)", file.read_text(), flags=re.M)}
    files = {file.stem for file in (REPO / "tests").glob("test_*.py")}
    cited = set(re.findall(r"\b(test_\w+)", text)) - files
    assert cited and cited <= defined, sorted(cited - defined)


def test_every_relative_link_in_the_readme_and_docs_points_at_a_file():
    pages = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    links = [(page, target) for page in pages
             for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())]
    assert len(links) > 10
    missing = [f"{page.name}: {target}" for page, target in links if not (page.parent / target).exists()]
    assert not missing, missing
