"""Fuzzing the recipe loader: whatever the text, it returns a valid recipe or raises the
product's own one-line RecipeError, never another exception or a traceback."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtforge.errors import RecipeError
from trtforge.recipe import Recipe, load_recipe
from trtforge.surgery import builtin_pass_names

REPO = Path(__file__).resolve().parents[1]
BASE = (REPO / "recipes" / "yolov8n.yaml").read_text()
PASSES = {name: None for name in builtin_pass_names()}
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["no", "off", "1e3", "0755", "4GiB", "fp16", "int8",
                                                           "2024-01-01", "images", "calib/demo-calibration.txt"]))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["model", "input", "variants", "build", "surgery", "verify", "precision",
                                     "calibration", "shape", "name", "profiles", "images", "workspace", "x"]),
                    inner, max_size=5)), max_leaves=20)


def outcome(tmp_path: Path, text: str) -> Recipe | RecipeError:
    file = tmp_path / "recipes" / "fuzz.yaml"
    file.parent.mkdir(exist_ok=True)
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_recipe(file, REPO, PASSES)
    except RecipeError as exc:
        message = str(exc)
        # The file sits outside the project root here, so it is named by its full path.
        assert "\n" not in message and message.startswith(str(file)), message
        return exc


@FUZZ
@given(document=documents)
def test_any_yaml_structure_is_a_recipe_or_one_line_error(tmp_path, document):
    outcome(tmp_path, yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(position=st.integers(0, len(BASE)), cut=st.integers(0, 40), insert=st.text(max_size=8))
def test_mutated_builtin_recipe_is_a_recipe_or_one_line_error(tmp_path, position, cut, insert):
    outcome(tmp_path, BASE[:position] + insert + BASE[position + cut:])
