"""The task graph of the last doit command, reused while nothing it was made from changed.

A no-op build cost three times doit's own start-up, nearly all of it making the graph:
importing the generators (about fifty dataclasses), parsing the recipes, listing image
sets (issue 15). The graph is a function of what generation reads, so dodo.py keeps it in
artifacts/cache/tasks.json beside a record of those reads, and hands doit the stored graph
when every read gives the same answer again. Nothing is declared by hand, so nothing can
be forgotten: while the graph is made, `ReadLog` watches every file stat, listing, open,
access, readlink and environment variable of the process, and checking it again means
asking each of those once more (hashing what was read when small, stat for the rest, as
doit does for its own file_dep). What no read can show joins the key: trtforge's own
code, the Python that runs it, and trtexec's answer (asked as every build asks it, so a
script trtexec that changes its answer is still noticed).

A stored task has no stage function to call: its action makes the graph afresh (once per
process), checks that the task there is the one stored, and runs that task's action. A
graph that printed anything while it was made (a broken recipe's warning, say), or holds
anything not listed in `_encoded_task`, is not stored, and is made on every command as
before. TRTFORGE_TASK_CACHE=0 turns the cache off.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import json
import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import read_json_object, write_text_atomic

FORMAT = 1
CACHE = "tasks.json"  # under artifacts/cache/
_SMALL = 1 << 20  # files up to this size are compared by content, larger ones by stat


# ----------------------------------------------------------------------------- watching reads

# The functions ReadLog replaces, as they were: what `observe` asks with, so that asking is not noted
_stat, _lstat, _listdir, _scandir, _access, _readlink = os.stat, os.lstat, os.listdir, os.scandir, os.access, os.readlink
_open, _getitem = builtins.open, os._Environ.__getitem__


def observe(kind: str, subject: str) -> Any:
    """What one read of the file system or environment answers now: the value `ReadLog`
    records while the graph is made, and compares with later."""
    try:
        if kind == "env":
            return _getitem(os.environ, subject)
        if kind == "list":
            return sorted(_listdir(subject))
        if kind == "readlink":
            return _readlink(subject)
        if kind.startswith("access"):
            return _access(subject, int(kind[len("access"):]))
        if kind == "read":
            return _content(subject)
        return _state(_stat(subject) if kind == "stat" else _lstat(subject))
    except (OSError, KeyError):
        return None


def _state(st: os.stat_result) -> Any:
    """A stat as far as it can change what generation makes: a folder is a folder whatever
    its mtime (its entries are a listing of their own); a file is its size, mtime and inode."""
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return [st.st_size, st.st_mtime_ns, st.st_ino]
    return [stat.S_IFMT(st.st_mode)]


def _content(path: str) -> Any:
    st = _stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size > _SMALL:
        return _state(st)
    with _open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class ReadLog:
    """Within `with`, every read of the file system and environment by this process, as
    {(kind, subject): answer}; `spoke` tells whether anything was printed."""

    def __init__(self, ignored: tuple[str, ...] = ()) -> None:
        self.reads: dict[tuple[str, str], Any] = {}
        self.spoke = False
        self._ignored = ignored

    def note(self, kind: str, subject: Any) -> None:
        if isinstance(subject, int) or subject is None:
            return  # a file descriptor: opened, and noted, by path first
        subject = os.fsdecode(subject)
        absolute = os.path.abspath(subject) if kind != "env" else subject
        if (kind, absolute) not in self.reads and not absolute.startswith(self._ignored):
            self.reads[kind, absolute] = observe(kind, absolute)

    def __enter__(self) -> ReadLog:
        log = self
        self._streams = sys.stdout, sys.stderr

        def stat_(path, *args, dir_fd=None, follow_symlinks=True):
            if dir_fd is None:
                log.note("stat" if follow_symlinks else "lstat", path)
            return _stat(path, *args, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

        def lstat_(path, *args, dir_fd=None):
            if dir_fd is None:
                log.note("lstat", path)
            return _lstat(path, *args, dir_fd=dir_fd)

        def listdir_(path="."):
            log.note("list", path)
            return _listdir(path)

        def scandir_(path="."):
            log.note("list", path)
            return _scandir(path)

        def access_(path, mode, *args, **kwargs):
            log.note(f"access{mode}", path)
            return _access(path, mode, *args, **kwargs)

        def readlink_(path, *args, **kwargs):
            log.note("readlink", path)
            return _readlink(path, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if not any(c in mode for c in "wax+"):
                log.note("read", file)
            return _open(file, mode, *args, **kwargs)

        def getitem_(environ, key):
            log.note("env", key)
            return _getitem(environ, key)

        os.stat, os.lstat, os.listdir, os.scandir = stat_, lstat_, listdir_, scandir_
        os.access, os.readlink, builtins.open, io.open = access_, readlink_, open_, open_
        os._Environ.__getitem__ = getitem_
        sys.stdout, sys.stderr = _Speaking(sys.stdout, self), _Speaking(sys.stderr, self)
        return self

    def __exit__(self, *exc) -> None:
        os.stat, os.lstat, os.listdir, os.scandir = _stat, _lstat, _listdir, _scandir
        os.access, os.readlink, builtins.open, io.open = _access, _readlink, _open, _open
        os._Environ.__getitem__ = _getitem
        sys.stdout, sys.stderr = self._streams


class _Speaking:
    """A stream that tells its ReadLog when something is written to it."""

    def __init__(self, stream, log: ReadLog) -> None:  # stream: any text stream
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.spoke = self._log.spoke or bool(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def unchanged(reads: list) -> bool:
    """Does every recorded read answer as it did? Stops at the first that does not."""
    return all(observe(kind, subject) == answer for kind, subject, answer in reads)


# ----------------------------------------------------------------------------- the key

def key(root: Path, host: tuple) -> dict:
    """What the graph depends on besides its reads: trtforge's code (every module's size and
    mtime), the Python running it and trtexec's answer (probed by a build, recalled by
    `doit list`: the same answer gives the same graph, so either command reuses the other's)."""
    package = Path(__file__).resolve().parent
    code = hashlib.sha256()
    for folder, subfolders, files in sorted(os.walk(package)):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                code.update(f"{folder}/{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    trtexec, problem = host
    return {"format": FORMAT, "root": str(root), "python": [sys.executable, sys.version],
            "code": code.hexdigest(),
            "trtexec": [str(trtexec.path), str(trtexec.version)] if trtexec else problem}


# ----------------------------------------------------------------------------- tasks as JSON

class Uncachable(Exception):
    """A task holds something the cache cannot store; the graph is then made every time."""


def _encoded_task(task: dict) -> dict:
    """A generated task as JSON: its lists as they are, its checks and actions by kind."""
    from doit.tools import config_changed

    from .gpu import gpu_config_changed
    from .tasks import refuse, run_stage
    from .uptodate import ArchiveIntact, outputs_intact

    def check(item: Any) -> Any:
        if item is False:
            return False
        if item is outputs_intact:
            return "outputs_intact"
        if isinstance(item, ArchiveIntact):
            return ["archive_intact", item.record]
        if type(item) in (config_changed, gpu_config_changed) and item.encoder is None:
            return [type(item).__name__, item.config]
        raise Uncachable(f"uptodate {item!r}")

    def action(item: Any) -> Any:
        func, args = item[0], item[1]
        if func is run_stage and len(item) == 2:
            return ["stage"]
        if func is refuse and len(item) == 2:
            return ["refuse", *args]
        raise Uncachable(f"action {item!r}")

    encoded = {}
    for field, value in task.items():
        if field in ("name", "doc") and isinstance(value, str):
            encoded[field] = value
        elif field in ("file_dep", "targets", "task_dep") and all(isinstance(v, str) for v in value):
            encoded[field] = list(value)
        elif field == "clean" and value is True:
            encoded[field] = True
        elif field == "uptodate":
            encoded[field] = [check(item) for item in value]
        elif field == "actions":
            encoded[field] = None if value is None else [action(item) for item in value]
        else:
            raise Uncachable(f"{field}: {value!r}")
    try:
        return json.loads(json.dumps(encoded))  # as it will read back: tuples as lists
    except (TypeError, ValueError) as exc:  # a config value JSON cannot hold
        raise Uncachable(str(exc)) from None


def _decoded_task(stage: str, encoded: dict, root: Path) -> dict:
    """A stored task for doit: checks rebuilt, a stage action replaced by `run_generated`."""
    from doit.tools import config_changed

    from .gpu import gpu_config_changed
    from .uptodate import ArchiveIntact, outputs_intact

    checks = {"config_changed": config_changed, "gpu_config_changed": gpu_config_changed,
              "archive_intact": ArchiveIntact}

    def check(item: Any) -> Any:
        if item is False:
            return False
        return outputs_intact if item == "outputs_intact" else checks[item[0]](item[1])

    def action(item: list) -> tuple:
        if item[0] == "refuse":
            from doit.exceptions import TaskFailed

            return (TaskFailed, [item[1]])
        return (run_generated, [str(root), f"{stage}:{encoded['name']}", encoded])

    task = dict(encoded)
    if "uptodate" in task:
        task["uptodate"] = [check(item) for item in encoded["uptodate"]]
    if task.get("actions") is not None:
        task["actions"] = [action(item) for item in encoded["actions"]]
    return task


# ----------------------------------------------------------------------------- running a stored task

_live_lock = threading.Lock()


@functools.cache
def _live_graph(root: str) -> dict[str, dict]:
    """The graph made afresh, by full task name: what a stored task runs (once per process)."""
    from .tasks import doit_namespace, load_project_or_invalid

    return {f"{stage}:{task['name']}": task
            for stage, made in _generated(doit_namespace(load_project_or_invalid(Path(root)))).items()
            for task in made}


def _generated(namespace: dict[str, Callable]) -> dict[str, list[dict]]:
    """{stage: its tasks} from tasks.doit_namespace's creators (`task_<stage>`)."""
    return {name[len("task_"):]: list(make()) for name, make in namespace.items()}


def run_generated(root: str, name: str, stored: dict, task, targets):  # task, targets: doit's own
    """Action of a stored task: run the task the graph holds now, which must be the stored one.

    It differs only when something generation reads changed after this command read the
    cache (a recipe saved mid-build): the task then fails in one line and the cache is
    dropped, so the next command makes the graph from what is there."""
    from doit.exceptions import InvalidDodoFile, TaskFailed

    from .errors import TrtforgeError
    from .tasks import run_stage

    try:
        with _live_lock:
            live = _live_graph(root).get(name)
    except (InvalidDodoFile, TrtforgeError) as exc:
        return TaskFailed(f"{name}: {exc}")
    try:
        same = live is not None and _encoded_task(live) == stored
    except Uncachable:
        same = False
    if not same:
        forget(Path(root) / "artifacts")
        return TaskFailed(f"{name}: the project changed after this build started (a recipe, an image set or "
                          "trtforge itself); rerun")
    (_, args), = [a for a in live["actions"] if a[0] is run_stage]
    return run_stage(*args, task=task, targets=targets)


# ----------------------------------------------------------------------------- the namespace

def forget(artifacts: Path) -> None:
    try:
        (artifacts / "cache" / CACHE).unlink()
    except OSError:
        pass


def enabled() -> bool:
    return os.environ.get("TRTFORGE_TASK_CACHE", "1") != "0"


def doit_namespace(root: Path) -> dict[str, Callable]:
    """tasks.doit_namespace, from the stored graph when nothing it was made from changed,
    else made now (and stored when it can be)."""
    from .session import READ_ONLY_COMMANDS, doit_command
    from .trtexec import host_trtexec

    artifacts = root / "artifacts"
    probe = doit_command(sys.argv) not in READ_ONLY_COMMANDS
    host = host_trtexec(artifacts, probe)
    wanted = key(root, host)
    stored = _stored(artifacts / "cache" / CACHE)
    if stored and stored.get("key") == wanted and unchanged(stored["reads"]):
        return _creators({stage: [_decoded_task(stage, t, root) for t in made]
                          for stage, made in stored["tasks"].items()}, stored["docs"])
    graph, docs = _made_now(root, host, wanted)
    return _creators(graph, docs)


def _made_now(root: Path, host: tuple, wanted: dict) -> tuple[dict, dict]:
    """Make the graph while watching its reads; store it when it can be reused."""
    from . import tasks

    artifacts = root / "artifacts"
    log = ReadLog(ignored=(str(artifacts / "cache" / CACHE),))
    tasks.forget_what_was_read()
    with log:
        project = tasks.load_project_or_invalid(root, host=host)
        namespace = tasks.doit_namespace(project)
        graph = _generated(namespace)
    docs = {stage: namespace[f"task_{stage}"].__doc__ for stage in graph}
    if enabled() and not log.spoke and not project.broken and not _reads_build_outputs(log, artifacts):
        try:
            encoded = {stage: [_encoded_task(t) for t in made] for stage, made in graph.items()}
        except Uncachable:
            return graph, docs
        reads = [[kind, subject, answer] for (kind, subject), answer in log.reads.items()]
        _store(artifacts / "cache" / CACHE, {"key": wanted, "reads": reads, "tasks": encoded, "docs": docs})
    return graph, docs


def _reads_build_outputs(log: ReadLog, artifacts: Path) -> bool:
    """Did making the graph read anything under artifacts/ (the task cache's own files aside)?
    Tasks write there, so such a graph could differ from the one a stored task is checked
    against mid-build (the project would seem to change under every build): it is not kept.
    No generator does so today; this keeps one that starts to from failing builds."""
    outputs, cache = f"{artifacts}{os.sep}", f"{artifacts / 'cache'}{os.sep}"
    return any(subject.startswith(outputs) and not subject.startswith(cache) for _, subject in log.reads)


def _creators(graph: dict[str, list[dict]], docs: dict[str, str]) -> dict[str, Callable]:
    namespace = {}
    for stage, made in graph.items():
        def creator(made=made):
            yield from made

        creator.__doc__ = docs[stage]
        namespace[f"task_{stage}"] = creator
    return namespace


def _stored(path: Path) -> dict | None:
    data = read_json_object(path) if enabled() else {}
    return data if isinstance(data.get("key"), dict) and data["key"].get("format") == FORMAT else None


def _store(path: Path, data: dict) -> None:
    try:
        write_text_atomic(path, json.dumps(data, separators=(",", ":")))
    except OSError:
        pass  # a cache: not keeping it only costs the next command a graph
