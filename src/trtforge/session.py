"""One doit invocation on one project: its state DB, its lock, its signals.

Measured with doit 0.37 (../shared/DESIGN.md): the `json` and `dbm` backends lose or
corrupt records when two doit processes share them, so the state lives in `sqlite3`
under artifacts/, and a command that runs tasks holds an exclusive lock for the whole
invocation. doit writes its DB once, at exit, and only Ctrl-C leads there cleanly; SIGTERM
(what `timeout` and CI send) and SIGHUP (a closed terminal, a dropped ssh session) would
lose every success of the run, so they are turned into the same clean stop. Holding the
lock also makes it safe to sweep the temporaries that an earlier, killed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from doit.reporter import ConsoleReporter

from .atomic import WORK_MARK, leftover_temporaries, sweep_temporaries
from .console import info
from .errors import TrtforgeError, broken_link, disk_error_message
from .uptodate import MD5Checker

# doit commands that only read the state: they neither take the lock nor sweep.
READ_ONLY_COMMANDS = {"list", "info", "help", "dumpdb", "tabcompletion", "graph"}
_held_lock: int | None = None  # the lock's file descriptor, see _take_lock
_stopped_by: int | None = None  # the signal that stopped this run
_terminal_fds: tuple[int, ...] = ()  # stdout/stderr when they were a terminal at the start
current_task: str | None = None  # set by tasks.run_stage while a stage runs
_on_stop: list = []  # callables run when a signal stops the run (on_stop)


def doit_config(artifacts: Path) -> dict:
    return {
        "backend": "sqlite3",
        "dep_file": str(artifacts / ".doit.db"),
        "default_tasks": [],
        "action_string_formatting": "new",
        "reporter": OneLineFailureReporter,
        "check_file_uptodate": MD5Checker,
    }


class OneLineFailureReporter(ConsoleReporter):
    """doit's console reporter, minus the replay of a failed task's output when it has none.

    doit ends every failure with a rule and the task's captured stdout, even when that is
    empty, so a failure that trtforge already reported in one line would end on noise.
    Output a task did print (and that was not shown live) is still replayed as doit does.
    """

    def complete_run(self) -> None:
        self.failures = [f for f in self.failures if self._replayed(f["task"]).strip()]
        super().complete_run()

    def _replayed(self, task) -> str:  # noqa: ANN001 - a doit Task
        """What doit's complete_run would print of the task's captured output (the same rules):
        stderr a stage wrote live, such as a progress line, is not replayed at the default
        verbosity, so it must not keep an empty stdout block in."""
        show_err = task.verbosity < 1 or self.failure_verbosity > 0
        show_out = task.verbosity < 2 or self.failure_verbosity == 2
        return ("".join(a.err or "" for a in task.actions) if show_err else "") + \
            ("".join(a.out or "" for a in task.actions) if show_out else "")


def doit_command(argv: list[str]) -> str:
    """The doit sub-command of this invocation (`run` when only task names are given)."""
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg if arg in READ_ONLY_COMMANDS or arg in {"run", "forget", "clean", "ignore",
                                                                "auto", "reset-dep", "strace"} else "run"
    return "run"


def begin(artifacts: Path, argv: list[str] | None = None) -> None:
    """Prepare artifacts/ for this invocation; raise TrtforgeError if another one runs or
    artifacts/ cannot be written."""
    read_only = doit_command(argv if argv is not None else sys.argv) in READ_ONLY_COMMANDS
    try:
        refuse_unusable_artifacts(artifacts)
        artifacts.mkdir(parents=True, exist_ok=True)
        _refuse_unreadable_db(artifacts / ".doit.db")
        if read_only:
            return
        _take_lock(artifacts / ".trtforge.lock")
        stale = leftover_temporaries(artifacts)
        if any(path.name.startswith(WORK_MARK) for path in stale):  # a killed build's: its tool may live on
            _end_leftover_tools(artifacts)
        swept = sweep_temporaries(stale)
    except OSError as exc:
        raise _unwritable(exc, artifacts) from None
    if swept:
        info(f"removed {len(swept)} temporary file(s) an interrupted run left in {artifacts}")
    _guard_state_writes()
    _handle_stop_signals()
    sys.excepthook = _report_stop


def _end_leftover_tools(artifacts: Path) -> None:
    """End the tools a run killed with SIGKILL left running here (a trtexec behind a wrapper
    that does not `exec` outlives the parent-death signal), before their work folders are
    removed and a second build starts beside them; refuse to go on while one cannot be ended.
    Called only when such a work folder is left: scanning /proc costs about 20 µs a process,
    which a no-op build on a busy host should not pay."""
    from .proc import end_leftover_tools

    ended, alive = end_leftover_tools(artifacts)
    if alive:
        shown = ", ".join(f"{pid} ({name})" for pid, name in sorted(alive.items()))
        raise TrtforgeError(f"{artifacts.name}: process(es) {shown} of an earlier build still run here and cannot be "
                            "ended by this user; stop them, then rerun")
    if ended:
        shown = ", ".join(f"{pid} ({name})" for pid, name in sorted(ended.items()))
        info(f"ended {len(ended)} process(es) a killed run left running in {artifacts}: {shown}")


def refuse_unusable_artifacts(artifacts: Path) -> None:
    """Raise a one-line TrtforgeError if artifacts/ exists but is no folder to write in: a
    dangling symlink (a data disk that is not mounted; creating the folder behind it would
    fill the system disk instead), a link to a file or a link loop, or a plain file. Each
    made `mkdir` fail with a FileExistsError traceback before."""
    shown = artifacts.name
    broken = broken_link(artifacts)
    if broken is not None:
        raise TrtforgeError(f"{shown}: {broken[1]}")
    if artifacts.is_symlink():
        if not artifacts.is_dir():
            raise TrtforgeError(f"{shown}: is a symlink to {os.readlink(artifacts)}, which is a file, not a folder; "
                                "point the link at a folder or remove it")
    elif artifacts.exists() and not artifacts.is_dir():
        raise TrtforgeError(f"{shown}: is a file, not a folder; move it away")


def _handle_stop_signals() -> None:
    """SIGTERM, Ctrl-C and SIGHUP all stop the run cleanly (see `_stop_on_signal`). A SIGHUP
    that is ignored (`nohup doit ...`) stays ignored: that user asked to outlive the terminal."""
    global _terminal_fds
    _terminal_fds = tuple(fd for fd in (1, 2) if os.isatty(fd))
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _stop_on_signal)


def _unwritable(exc: OSError, artifacts: Path) -> OSError | TrtforgeError:
    """One line naming artifacts/ for a disk the user must fix (read-only, no permission,
    full); any other OSError is a bug and keeps its traceback."""
    message = disk_error_message(OSError(exc.errno, exc.strerror, str(artifacts)), "trtforge")
    return exc if message is None else TrtforgeError(message)


def _guard_state_writes() -> None:
    """A failed write of doit's sqlite3 state becomes one line instead of a traceback.

    doit writes the state DB in two places: removing a failed task's record (mid-run) and
    the final commit. On a full disk both raise `sqlite3.OperationalError`, which doit 0.37
    prints as a traceback, exit 3 (measured on a full tmpfs). sqlite rolls a failed write
    back, so the DB stays readable. A record that could not be removed is harmless: the run
    that failed replaced no output (atomic writes), so whatever made the task run still
    makes it run. A failed final commit loses this run's records: its tasks run again next
    time, and their outputs are checked, never trusted. doit reads backends from its own
    config files only, before dodo.py loads, hence a wrapper around its sqlite3 class.
    """
    from doit.dependency import SqliteDB

    if getattr(SqliteDB, "_trtforge_guarded", False):
        return
    remove, dump = SqliteDB.remove, SqliteDB.dump

    def remove_or_keep(self, task_id):  # noqa: ANN001, ANN202 - doit's signature
        import sqlite3

        try:
            remove(self, task_id)
        except sqlite3.OperationalError:
            pass  # see the docstring: the final commit reports the full disk

    def dump_or_one_line(self):  # noqa: ANN001, ANN202 - doit's signature
        import contextlib
        import sqlite3

        from doit.exceptions import InvalidTask

        try:
            dump(self)
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.rollback()
                self._conn.close()
            # doit prints InvalidTask as one `ERROR:` line, exit 3
            raise InvalidTask(f"trtforge: cannot save the build state in {self.name} ({exc}); free space on "
                              "that disk and rerun: finished outputs are kept and checked again, "
                              "never trusted unchecked") from None

    SqliteDB.remove, SqliteDB.dump, SqliteDB._trtforge_guarded = remove_or_keep, dump_or_one_line, True


def _refuse_unreadable_db(db: Path) -> None:
    """A corrupt or foreign state DB makes doit die with a traceback on every run (measured):
    say so in one line, with the recovery, before doit opens it."""
    from .doctor import check_state_db

    finding = check_state_db(db.parent.parent)
    if finding.status != "ok":
        raise TrtforgeError(f"{finding.detail}; {finding.next_step}")


def _take_lock(path: Path) -> None:
    """Hold the project's build lock until this process ends, or refuse: another build runs.

    One flock on artifacts/.trtforge.lock, which the kernel drops when the process ends, also
    on SIGKILL, so no stale lock is ever left. Not the filelock package (the timing cache's
    lock, which waits, uses it): importing it cost 12 ms of CPU, a sixth of doit's own
    start-up, on every build command (issue 15), for this one non-blocking call."""
    global _held_lock
    import fcntl

    if _held_lock is not None:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        owner = _read_pid(path.with_suffix(".pid"))
        raise TrtforgeError(f"another build is running in this project{f' (pid {owner})' if owner else ''}; "
                            "wait for it to finish or stop it") from None
    path.with_suffix(".pid").write_text(str(os.getpid()))
    _held_lock = fd


def _read_pid(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _stop_on_signal(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    """Ctrl-C, SIGTERM and SIGHUP all become KeyboardInterrupt: doit then saves its state DB
    in its `finally` (so every task that finished stays recorded) and the running stage's own
    `finally` blocks end its tool's process group and remove its temporaries.

    After a hangup, every write to the terminal fails with EIO, and the first one during the
    clean-up replaced the stop (measured: a closed pty ended the run with exit 1, not 129).
    So output that went to the terminal goes nowhere from then on; a redirected log stays."""
    global _stopped_by
    _stopped_by = signum
    if signum == signal.SIGHUP and _terminal_fds:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in _terminal_fds:
            os.dup2(devnull, fd)
        os.close(devnull)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def on_stop(callback) -> None:
    """Run `callback` when a signal stops the run, before the process exits. For work that
    lives outside this process (a remote build): local tools end with their process group,
    but under `doit -P thread` the signal reaches only the main thread, and the threads
    waiting on other machines die with the process without a word to those machines."""
    _on_stop.append(callback)


def _report_stop(kind, value, tb) -> None:  # noqa: ANN001 - sys.excepthook signature
    """One line instead of a traceback for a stop, and the shell's exit code for the signal."""
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    for callback in _on_stop:
        with contextlib.suppress(Exception):  # a failing callback must not cost the stop line and exit code
            callback()
    signum = _stopped_by or signal.SIGINT
    where = f" during {current_task}" if current_task else ""
    try:
        print(f"trtforge: stopped by {signal.Signals(signum).name}{where}; finished tasks are recorded and "
              "partial outputs were removed: rerun the same command to continue", file=sys.stderr, flush=True)
        sys.stdout.flush()
    except OSError:
        pass  # nowhere left to say it (a closed pipe): the exit code still tells
    os._exit(128 + signum)  # what a shell reports for a process ended by that signal
