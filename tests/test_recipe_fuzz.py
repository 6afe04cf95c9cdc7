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


def parsed(text: str, libyaml: bool) -> tuple:
    """parse_document's data and locations, or its error, with or without libyaml's parser."""
    from unittest import mock

    from trtforge import yamldoc

    with mock.patch.object(yamldoc, "CParser", yamldoc.CParser if libyaml else None):
        try:
            document = yamldoc.parse_document(text, "fuzz.yaml")
        except RecipeError as exc:
            return ("error", str(exc))
    # The one measured difference in what both accept: an empty value in a flow collection
    # (`{min: , opt: 1}`) is placed where the next token starts by libyaml, right after its
    # key by PyYAML. An error about such a value may name the next column or line.
    return document.data, {path: where if where.text != "" else "empty"
                           for path, where in document.locations.items()}


def test_libyaml_is_what_parses_recipes():
    from trtforge import yamldoc

    assert yamldoc.CParser is not None  # PyYAML's wheels bundle libyaml; without it the no-op build slows
    assert type(yamldoc._compose(BASE)[0]).__name__ == "_LibyamlLoader"


@FUZZ
@given(position=st.integers(0, len(BASE)), cut=st.integers(0, 40),
       insert=st.text(st.characters(max_codepoint=127), max_size=8) | st.text(max_size=8))
def test_libyaml_and_pyyaml_read_every_text_alike(position, cut, insert):
    """Recipes parse with libyaml's parser for speed (issue 15); the data, every value's line
    and column, and every refusal must be what PyYAML's own parser gives."""
    text = BASE[:position] + insert + BASE[position + cut:]
    assert parsed(text, libyaml=True) == parsed(text, libyaml=False)


@FUZZ
@given(document=documents)
def test_libyaml_and_pyyaml_read_every_structure_alike(document):
    text = yaml.safe_dump(document, allow_unicode=True)
    assert parsed(text, libyaml=True) == parsed(text, libyaml=False)
