"""The md5 memo of file_deps: a file touched without being changed is hashed by one command,
not by every later one, and a changed file is still seen (tiny 16x16 models)."""

from __future__ import annotations

import json
import os
import struct

import onnx
import onnx.numpy_helper
from conftest import executed, run_doit
from test_taskcache import env, project  # noqa: F401 (fixtures)

MEMO = "artifacts/cache/file-md5.json"


def test_a_touched_input_is_hashed_once_and_a_changed_one_still_reruns(project, env):  # noqa: F811
    source = project / "models" / "m.onnx"
    assert run_doit(project, "export:m", env=env).returncode == 0
    os.utime(source)  # the same bytes, a new mtime: doit must hash it to know
    assert executed(run_doit(project, "export:m", env=env)) == []
    memo = json.loads((project / MEMO).read_text())
    assert list(memo) == ["models/m.onnx"] and memo["models/m.onnx"][:2] == [source.stat().st_mtime_ns,
                                                                                source.stat().st_size]
    kept = (project / MEMO).stat().st_mtime_ns
    assert executed(run_doit(project, "export:m", env=env)) == []
    assert (project / MEMO).stat().st_mtime_ns == kept  # nothing new was hashed

    first_weight = struct.pack("<f", onnx.numpy_helper.to_array(onnx.load(str(source)).graph.initializer[0]).flat[0])
    data = source.read_bytes()
    assert data.count(first_weight) == 1
    source.write_bytes(data.replace(first_weight, struct.pack("<f", 0.5)))  # one weight, in place
    assert source.stat().st_size == memo["models/m.onnx"][1]  # the same size: only the content tells
    again = run_doit(project, "export:m", env=env)
    assert again.returncode == 0 and "export:m" in executed(again)


def test_a_damaged_memo_entry_costs_a_hash_not_the_command(project, env):  # noqa: F811
    """An entry cut short (three of its four fields) whose evidence still matches is hashed
    again, as a missing one is."""
    source = project / "models" / "m.onnx"
    assert run_doit(project, "export:m", env=env).returncode == 0
    os.utime(source)
    st = source.stat()
    (project / MEMO).write_text(json.dumps({"models/m.onnx": [st.st_mtime_ns, st.st_size, st.st_ino]}))
    again = run_doit(project, "export:m", env=env)
    assert again.returncode == 0 and executed(again) == []
    assert len(json.loads((project / MEMO).read_text())["models/m.onnx"]) == 4
