"""Strict YAML reading for recipes, with a location for every value.

PyYAML's `safe_load` silently keeps the last of two duplicate keys, expands aliases
without bound (a few hundred bytes can walk to tens of millions of characters) and
applies YAML 1.1 typing (`no` is False, `1e3` a string, `0755` is 493). Recipes are
short, hand-written files, so this module refuses what a person never means: aliases,
duplicate keys, non-string keys, explicit tags, files over a size cap, and nesting over a
depth cap (PyYAML composes nodes recursively: `a: [[[...]]]` 400 deep, 800 bytes, ended in
a 3,000-line RecursionError traceback on every doit command). It keeps the line, column
and source text of every value so that validation errors can point at `file:line:col` and
explain a YAML 1.1 surprise in the value the user actually typed.
"""

from __future__ import annotations

import datetime
import difflib
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from .errors import RecipeError

MAX_RECIPE_BYTES = 256 * 1024
# The deepest real recipe field is 8 levels (variants.v.build.profiles[0].images.min[0]);
# 32 leaves room for plugin pass parameters and keeps composing far from Python's limit.
MAX_RECIPE_DEPTH = 32
# Measuring how deep a refused document goes costs PyYAML's scanner time quadratic in the
# depth of one line of `[[[[` (4000 deep: 6 s), so the count stops after this many events.
_DEPTH_COUNT_EVENTS = 1000
# Linux's PATH_MAX: no path, pattern or name in a recipe is longer. It also keeps every
# number under Python's 4300-digit int() limit (a ValueError traceback past it) and every
# error message that quotes a value readable.
MAX_SCALAR_CHARS = 4096
FieldPath = tuple  # keys (str) and list indices (int), e.g. ("variants", "fp16")

_KEY = object()  # prefix of the paths under which the locations of keys are stored
_BASIC_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp")
}


@dataclass(frozen=True)
class Located:
    """Where a value came from: 1-based line and column, and its source text."""

    line: int
    column: int
    text: str | None  # the scalar as typed, None for mappings and sequences


class _Refused(Exception):
    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(message)
        self.mark = mark


class _StrictComposer(yaml.composer.Composer):
    """PyYAML's composer that refuses aliases before anything is expanded, and nesting deeper
    than MAX_RECIPE_DEPTH before it recurses into it. It reads events from whichever parser
    it is mixed with (_PythonLoader, _LibyamlLoader)."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not allowed in recipes; write the value out",
                           self.peek_event().start_mark)
        # the concrete classes: libyaml's check_event matches a class exactly, not its bases
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        if self._depth == MAX_RECIPE_DEPTH:
            mark = self.peek_event().start_mark
            raise _Refused(f"nested {self._measured_depth()} levels deep; a recipe is at most "
                           f"{MAX_RECIPE_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _measured_depth(self) -> str:
        """How deep the collection about to start goes, read off the parser's events (which
        PyYAML produces without recursion): `N`, or `at least N` where the count stopped."""
        depth = deepest = self._depth
        try:
            for _ in range(_DEPTH_COUNT_EVENTS):
                event = self.get_event()
                depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
                deepest = max(deepest, depth)
                if depth == self._depth:  # the deep collection ended
                    return str(deepest)
        except yaml.YAMLError:
            pass  # a syntax error further on: the depth so far is what is known
        return f"at least {deepest}"


class _PythonLoader(_StrictComposer, yaml.SafeLoader):
    """The strict composer over PyYAML's pure-Python reader, scanner and parser: the loader
    whose errors recipes report (its messages and marks are the ones faults.md quotes)."""


try:  # libyaml's parser ships in PyYAML's binary wheels; a source build may lack it
    from yaml.cyaml import CParser
except ImportError:  # pragma: no cover - every supported wheel has it
    CParser = None

if CParser is not None:
    class _LibyamlLoader(_StrictComposer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """The same strict composer over libyaml's parser, about 8x faster than PyYAML's
        (0.44 ms against 3.5 ms for a demo recipe): parsing the repository's ten recipes was
        about an eighth of a no-op build's CPU time. The composer and everything above it
        stay Python; on the texts _compose gives it, tests/test_recipe_fuzz.py holds the
        data and marks to _PythonLoader's (but an empty flow value's mark)."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _StrictComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


# Characters around which libyaml's and PyYAML's parsers were measured to disagree
# (tests/test_recipe_fuzz.py fuzzes the rest): a tab (libyaml takes `d<TAB>escription:`
# as a key, PyYAML refuses it), `?` in a flow collection (`[1, 6?4]` is a scalar to libyaml,
# an error to PyYAML) and `!` (`a: !` is '' to libyaml, None to PyYAML). A text with one of
# them, or with non-ASCII text, is read by PyYAML alone: the same answer, more slowly.
_LIBYAML_DIVERGES = frozenset("\t?!")


def _compose(text: str) -> tuple[Any, yaml.Node | None]:
    """(the loader, the document's root node). libyaml parses a plain text first (see
    _LIBYAML_DIVERGES); a document it or the composer refuses (a syntax error, a control
    character, an alias, nesting past libyaml's own limit of 1000) is parsed again by
    PyYAML's own parser, so a broken recipe's error reads exactly as it always has."""
    if CParser is not None and text.isascii() and not _LIBYAML_DIVERGES.intersection(text):
        try:
            return _root(_LibyamlLoader, text)
        except (yaml.YAMLError, _Refused):  # the text is ASCII: nothing to encode
            pass  # parsed again below, for PyYAML's own words
    return _root(_PythonLoader, text)  # its reader refuses control characters


def _root(loader_class: type, text: str) -> tuple[Any, yaml.Node | None]:
    loader = loader_class(text)
    try:
        return loader, loader.get_single_node()
    except BaseException:
        loader.dispose()
        raise


def format_path(path: FieldPath) -> str:
    """`('variants', 'fp16', 'build', 'plugins', 0)` -> `variants.fp16.build.plugins[0]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class Document:
    """A parsed recipe: plain Python data plus the location of every value."""

    def __init__(self, file: str, data: Any, locations: dict[FieldPath, Located]) -> None:
        self.file, self.data, self.locations = file, data, locations

    def error(self, path: FieldPath, message: str, *, at_key: bool = False) -> RecipeError:
        """One-line error at the closest known location of `path` (its key, if `at_key`)."""
        probe = tuple(path)
        if at_key and (_KEY,) + probe in self.locations:
            probe = (_KEY,) + probe
        while probe not in self.locations and probe:
            probe = probe[:-1]
        loc = self.locations.get(probe)
        return RecipeError(self.file, message, field=format_path(path),
                           line=loc.line if loc else None, column=loc.column if loc else None)

    def source_text(self, path: FieldPath) -> str | None:
        loc = self.locations.get(tuple(path))
        return loc.text if loc else None

    def unknown_key(self, path: FieldPath, key: str, allowed: Iterable[str]) -> RecipeError:
        return self.error(path + (key,), f"unknown key '{key}'; {suggestion(key, allowed)}", at_key=True)


def suggestion(word: str, choices: Iterable[str]) -> str:
    """`did you mean 'x'?` when a choice is close to `word`, else the list of choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(choices)}"


def parse_document(text: str, file: str) -> Document:
    """Parse one recipe's text strictly; raise RecipeError with file:line:col."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(file, f"file is larger than {MAX_RECIPE_BYTES // 1024} KiB; "
                                "a recipe is a short hand-written file")
    loader = None
    try:
        loader, root = _compose(text)
        if root is None:
            raise RecipeError(file, _nothing_to_read(text))
        locations: dict[FieldPath, Located] = {}
        data = _to_python(loader, root, (), locations)
    except _Refused as exc:
        raise RecipeError(file, str(exc), line=exc.mark.line + 1, column=exc.mark.column + 1) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = f"YAML syntax error: {exc.problem or exc.context}"
        if mark is None:
            raise RecipeError(file, what) from None
        raise RecipeError(file, what, line=mark.line + 1, column=mark.column + 1) from None
    except yaml.reader.ReaderError as exc:  # a control character: its offset gives line:col
        line, column = line_column(text, exc.position)
        raise RecipeError(file, f"control character U+{exc.character:04X} is not allowed in a recipe; delete it",
                          line=line, column=column) from None
    except yaml.YAMLError as exc:
        raise RecipeError(file, f"not readable as YAML: {str(exc).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return Document(file, data, locations)


def _nothing_to_read(text: str) -> str:
    """Why a recipe holding no YAML document loads nothing: it is empty, or it is only
    comments, as a copy of `trtforge init`'s my-model.yaml.example is before its fields are
    uncommented (issue 14: that copy was reported as empty)."""
    if any(line.lstrip().startswith("#") for line in text.splitlines()):
        return ("file holds only comments; uncomment its fields (model, input and variants at least, as "
                "recipes/my-model.yaml.example shows them) and fix their values; docs/recipes.md in the trtforge "
                "repository lists every field")
    return "file is empty; see docs/recipes.md in the trtforge repository for the recipe format"


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _to_python(loader: Any, node: yaml.Node, path: FieldPath,
               locations: dict[FieldPath, Located]) -> Any:
    mark = node.start_mark
    if isinstance(node, yaml.MappingNode):
        locations[path] = Located(mark.line + 1, mark.column + 1, None)
        if node.tag != "tag:yaml.org,2002:map":
            raise _Refused(f"YAML tag {node.tag} is not allowed in recipes", mark)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise _Refused(f"{format_path(path) or 'top level'}: keys must be plain text, "
                               f"got {key_node.value!r}", key_node.start_mark)
            _refuse_long(key_node, path)
            key = key_node.value
            if key in out:
                raise _Refused(f"{format_path(path + (key,))}: duplicate key '{key}' "
                               "(YAML would silently keep the last one); remove one",
                               key_node.start_mark)
            key_mark = key_node.start_mark
            locations[(_KEY,) + path + (key,)] = Located(key_mark.line + 1, key_mark.column + 1, key)
            out[key] = _to_python(loader, value_node, path + (key,), locations)
        return out
    if isinstance(node, yaml.SequenceNode):
        locations[path] = Located(mark.line + 1, mark.column + 1, None)
        if node.tag != "tag:yaml.org,2002:seq":
            raise _Refused(f"YAML tag {node.tag} is not allowed in recipes", mark)
        return [_to_python(loader, item, path + (i,), locations) for i, item in enumerate(node.value)]
    if node.tag not in _BASIC_TAGS:
        raise _Refused(f"YAML tag {node.tag} is not allowed in recipes", mark)
    _refuse_long(node, path)
    locations[path] = Located(mark.line + 1, mark.column + 1, node.value)
    try:
        value = loader.construct_object(node, deep=True)
    except ValueError:  # an int over sys.get_int_max_str_digits() (PYTHONINTMAXSTRDIGITS may lower it)
        raise _Refused(f"{format_path(path) or 'value'}: a number of {len(node.value):,} characters is not "
                       "a recipe value; write a smaller number", mark) from None
    # Dates would crash doit's JSON-encoded config later; keep them as typed text so a
    # text field gets it verbatim and a typed field reports it.
    if isinstance(value, (datetime.date, datetime.datetime)):
        return node.value
    return value


def _refuse_long(node: yaml.ScalarNode, path: FieldPath) -> None:
    if len(node.value) > MAX_SCALAR_CHARS:
        raise _Refused(f"{format_path(path) or 'top level'}: a value of {len(node.value):,} characters; a recipe "
                       f"value is at most {MAX_SCALAR_CHARS:,}", node.start_mark)
