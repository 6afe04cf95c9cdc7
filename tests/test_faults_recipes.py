"""Fault catalogue, recipes: what a user sees from `doit` itself for each bad recipe.

The loader's own tests (test_recipe.py) pin the messages; these run doit the way a user
does and check the contract of docs/faults.md: exit 3, exactly one `ERROR:` line on
stderr naming file:line:col (or the file) and the field, nothing run and nothing written
under artifacts/ but doit's bookkeeping, and a plain rerun works once the recipe is fixed.
"""

from __future__ import annotations

import time

import pytest
from conftest import SMALL_RECIPE, make_project, run_doit

INT8 = SMALL_RECIPE + """\
  int8:
    precision: int8
    calibration: {images: calib/set, batch: 2}
"""


def with_line(after: str, line: str) -> str:
    """SMALL_RECIPE with `line` inserted after the line starting with `after`."""
    lines = SMALL_RECIPE.splitlines(keepends=True)
    at = next(i for i, text in enumerate(lines) if text.startswith(after)) + 1
    return "".join(lines[:at] + [line + "\n"] + lines[at:])


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))

CASES = {
    "yaml syntax error": (SMALL_RECIPE.replace("[1, 3, 160, 160], dynamic", "[1, 3, 160, 160, dynamic"),
                          "recipes/yolov8n.yaml:2:", "YAML syntax error"),
    "unknown key": (SMALL_RECIPE.replace("export:", "exprot:"), "recipes/yolov8n.yaml:3:1: exprot",
                    "did you mean 'export'"),
    "wrong type": (SMALL_RECIPE.replace("opset: 17", "opset: seventeen"), "recipes/yolov8n.yaml:3:17: export.opset",
                   "expected a whole number from 13 to 21, got str 'seventeen'"),
    "duplicate key": (SMALL_RECIPE + "export: {opset: 18}\n", "recipes/yolov8n.yaml:", "duplicate key 'export'"),
    "yaml 1.1 'no' in a boolean field": (with_line("  workspace", "  timing_cache: no"), "build.timing_cache",
                                         "YAML reads unquoted 'no' as false; quote it"),
    "yaml 1.1 'off' in a text field": (SMALL_RECIPE.replace("name: images", "name: off"), "input.name",
                                       "YAML reads unquoted 'off' as false; quote it"),
    "yaml 1.1 '1e3' in a number field": (with_line("  workspace", "  optimization_level: 1e3"),
                                         "build.optimization_level", "write the number out in full"),
    "yaml 1.1 octal": (with_line("  workspace", "  optimization_level: 0003"), "build.optimization_level",
                       "plain decimal"),
    "alias bomb": (ALIAS_BOMB, "recipes/yolov8n.yaml:", "aliases"),
    "missing plugin library": (with_line("  workspace", "  plugins: [plugins/libnms.so]"), "build.plugins[0]",
                               "file 'plugins/libnms.so' does not exist"),
    "missing surgery pass": (SMALL_RECIPE.replace("infer_shapes]", "my_fix]"), "recipes/yolov8n.yaml:4:33: surgery[2]",
                             "no surgery pass named 'my_fix' (built in, or registered by a plugins/*.py file)"),
    "missing calibration folder": (INT8.replace("calib/set", "calib/nowhere"), "variants.int8.calibration.images",
                                   "'calib/nowhere' is no folder or manifest (relative paths start at the project root"),
    "control character": (SMALL_RECIPE.replace("seed: 0", "seed: 0\x07"), "recipes/yolov8n.yaml:1:57:",
                          "control character U+0007 is not allowed in a recipe; delete it"),
    "not utf-8": (None, "recipes/yolov8n.yaml:1:56:", "byte 0xff is not UTF-8 text; save the recipe as UTF-8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_recipe_is_one_error_line_exit_3_and_a_fixed_recipe_runs(tmp_path, case):
    text, where, says = CASES[case]
    project = make_project(tmp_path / "proj", {"yolov8n": SMALL_RECIPE})
    (project / "calib" / "set").mkdir(parents=True)
    recipe = project / "recipes" / "yolov8n.yaml"
    if text is None:
        recipe.write_bytes(SMALL_RECIPE.encode().replace(b"seed: 0", b"seed: \xff"))
    else:
        recipe.write_text(text)

    started = time.monotonic()
    result = run_doit(project, "build:yolov8n-fp32")
    assert time.monotonic() - started < 30  # an alias bomb must not expand
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ERROR: {where}") or (line.startswith("ERROR: recipes/yolov8n.yaml") and where in line), line
    assert says in line, line
    assert result.stdout == ""  # nothing ran
    assert not [p for p in (project / "artifacts").rglob("*") if p.name not in {".doit.db", ".trtforge.lock",
                                                                                ".trtforge.pid"}]

    recipe.write_text(SMALL_RECIPE)
    assert run_doit(project, "list").returncode == 0


def test_two_recipes_with_one_name_stop_doit_naming_both_files(tmp_path):
    project = make_project(tmp_path / "proj", {"a": "name: same\n" + SMALL_RECIPE, "b": "name: same\n" + SMALL_RECIPE})
    result = run_doit(project, "list")
    assert result.returncode == 3
    (line,) = result.stderr.strip().splitlines()
    assert line == "ERROR: recipes/a.yaml: name: recipe name 'same' is also used by b.yaml; rename one"
