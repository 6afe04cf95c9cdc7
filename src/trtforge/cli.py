"""The `trtforge` command: tools around the build that doit does not cover.

A thin click group. Each command is a few lines over a library function; the group owns
the error boundary so every command reports the same way: a `TrtforgeError` is one line
`trtforge: <message>` on stderr and exit 1; click's usage errors (a missing file) exit 2;
anything unexpected is one line plus a hint, and `--debug` shows its traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from .errors import TrtforgeError


class _Group(click.Group):
    """Turns errors raised by any command into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except TrtforgeError as exc:
            click.echo(f"trtforge: {exc}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            # the reader stopped early (`trtforge plan ... | head`): nothing more to say, nowhere to
            # say it; point stdout at nothing so the flush at exit cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)  # what a shell reports for a tool ended by SIGPIPE
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"trtforge: unexpected error: {type(exc).__name__}: {exc}", err=True)
            click.echo("trtforge: rerun with `trtforge --debug ...` to see the traceback", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of unexpected errors.")
def main(debug: bool) -> None:
    """trtforge: YAML recipes in, dependency-tracked TensorRT engines out.

    Builds run through doit (`doit list`, `doit`); these commands work on what it produced.
    """


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@main.command("verify-package", short_help="Check a release archive before deploying it.")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--max-gib", type=click.FloatRange(min=0, min_open=True), default=64.0, show_default=True,
              help="Refuse archives that decompress to more than this many GiB.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_package(archive: Path, max_gib: float, as_json: bool) -> None:
    """Check a release ARCHIVE (.tar.gz) before deploying it; extracts nothing.

    Checks the sidecar sha256, the gzip CRC, member names and types, every file against
    the manifest, and whether this host's TensorRT and GPU match the build. Exit 0 when
    it passes, 1 when it is refused.
    """
    from .release_verify import verify_archive

    report = verify_archive(archive, max_bytes=int(max_gib * (1 << 30)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    sidecar = ("sha256 matches" if report["sidecar"] == "matched"
               else "absent (gzip CRC and manifest hashes checked instead)")
    device = report["gpu"] or "unknown GPU"
    if report["compute_capability"]:
        device += f" (compute capability {report['compute_capability']})"
    rows = [
        ("format", report["format"]),
        ("files", f"{report['files']} + manifest, {_mib(report['bytes'])} uncompressed, all match the manifest"),
        ("sidecar", sidecar),
        ("tensorrt", report["tensorrt"] or "unknown"),
        ("built on", device),
        ("this host", report["host_check"]),
    ]
    click.echo(f"OK  {archive.name}")
    for label, value in rows:
        click.echo(f"  {label:<10} {value}")


@main.command(short_help="Say what this host can build.")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="The project folder (the one holding dodo.py).")
def doctor(project: Path) -> None:
    """One screen on what this host can build; exit 0 when every recipe can be built as
    far as this host allows (GPU-free stages without a GPU), 1 with the next step otherwise."""
    from .doctor import blocking, diagnose

    findings = diagnose(project.resolve())
    for finding in findings:
        click.echo(f"{finding.status:<8} {finding.topic:<16} {finding.detail}")
        if finding.next_step and finding.status != "ok":
            click.echo(f"{'':<8} {'':<16} next: {finding.next_step}")
    stops = blocking(findings)
    if stops:
        raise TrtforgeError(f"{stops[0].topic}: {stops[0].next_step or stops[0].detail}")


@main.command(short_help="Create a project folder for your own models.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--example", type=click.Choice(["yolov8n"]), default=None,
              help="Add the built-in demo recipe and its calibration and verification lists "
                   "(to a new project, or to the trtforge project already in FOLDER).")
def init(folder: Path, example: str | None) -> None:
    """Write a trtforge project into FOLDER (created if missing): dodo.py, recipes/ with a
    commented template, calib/, plugins/, models/ and a .gitignore. On an existing project,
    --example adds only the example's recipe and calib/ lists. Nothing is overwritten: a
    file init would write that exists already stops it before it writes anything."""
    from .project import init_project

    written = init_project(folder, example)
    for path in written:
        click.echo(f"wrote {path}")
    first = f"doit build:{example}-fp16" if example else "doit list"
    click.echo(f"next: cd {folder} && {first}   (on a host without TensorRT: doit cpu:<recipe>)")


@main.command(short_help="Show what a build would run, and why, without running it.")
@click.argument("target")
@click.option("--trt", type=click.Choice(["8.2", "8.5", "8.6", "10", "11"]), default=None,
              help="Render for this TensorRT generation instead of the host's trtexec.")
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(target: str, trt: str | None, project: Path, as_json: bool) -> None:
    """TARGET is <recipe> or <recipe>-<variant>: the tasks `doit build:` would consider, which
    would run and why (the reasons doit knows), and the exact trtexec command."""
    from .plan import preflight_verdicts, resolve_target, task_plan, trtexec_commands
    from .stages.export import onnx_source_problem
    from .tasks import load_project

    loaded = load_project(project.resolve(), trt)
    recipe, variants = resolve_target(loaded, target)
    steps = task_plan(loaded, recipe, variants)
    commands = trtexec_commands(loaded, recipe, variants)
    verdicts = preflight_verdicts(loaded, recipe, variants)
    source = onnx_source_problem(recipe.model, recipe.input, loaded.root)
    if as_json:
        click.echo(json.dumps({"tasks": [vars(s) for s in steps], "trtexec": commands, "preflight": verdicts,
                               "source": source or "ok"}, indent=2))
    else:
        _print_plan(loaded, recipe, steps, commands, verdicts)
    if source:
        raise TrtforgeError(f"export:{recipe.name} will refuse its model: {source}")
    refused = [v for v, command in commands.items() if isinstance(command, str) and command.startswith("refused:")]
    if refused:
        with_what = "on its target" if recipe.targets else f"with TensorRT {loaded.trtexec.version}"
        raise TrtforgeError(f"{recipe.name}-{refused[0]} cannot be built {with_what}: "
                            f"{commands[refused[0]].removeprefix('refused: ')}")


@main.group(short_help="Build machines on Ray: up, status, down (recipes' targets:).")
def fleet() -> None:
    """A Ray cluster whose machines advertise GPU classes that recipes' `targets:` name."""


@fleet.command(short_help="Start a head here, or join one, advertising build classes.")
@click.option("--join", "address", default=None, metavar="HOST:PORT", help="Join this head instead of starting one.")
@click.option("--class", "classes", multiple=True, metavar="RESOURCE[=GPUS]",
              help="A build class this machine advertises, e.g. trt:sm_86-trt10 (one unit per GPU; default 1).")
@click.option("--port", default=6379, show_default=True, help="The head's port.")
@click.option("--node-ip", default=None, help="The address other machines reach this one at (default: Ray's pick).")
def up(address: str | None, classes: tuple[str, ...], port: int, node_ip: str | None) -> None:
    """Start a Ray node in the background; `trtforge fleet down` stops it. The machine's TRTEXEC
    (else PATH, else /usr/src/tensorrt/bin/trtexec) is the trtexec its builds use."""
    from .fleet import start_node

    advertised = {}
    for item in classes:
        name, _, units = item.partition("=")
        if units and not units.strip().isdigit():
            raise TrtforgeError(f"--class {item}: the number after '=' is a whole number of GPUs")
        advertised[name] = int(units or 1)
    record = start_node(advertised, address, port, node_ip)
    head = record["head"]
    click.echo(f"fleet: {'joined ' + head if address else 'started a head at ' + head} (pid {record['pid']}, "
               f"log {record['log']})" + (f", advertising {', '.join(f'{k}={v}' for k, v in advertised.items())}"
                                          if advertised else ""))
    click.echo("  builds: TRTFORGE_RAY_ADDRESS=<head> doit -n 4 -P thread build:<recipe>-<variant>")
    click.echo("  another machine: TRTEXEC=/path/to/trtexec trtforge fleet up --join <head> --class <resource>")


@fleet.command(short_help="List the fleet's machines, their classes and builds running.")
def status() -> None:
    from .fleet import connect, status_rows

    for row in status_rows(connect()):
        classes = ", ".join(f"{name} ({row['busy'][name]} of {units} building)" for name, units in row["classes"].items())
        click.echo(f"{row['address']:<16} {classes or 'no build class (head or CPU-only machine)'}")
        for task in row["builds"]:
            click.echo(f"{'':<16}   building {task}")


@fleet.command(short_help="Stop the Ray nodes `fleet up` started on this machine.")
def down() -> None:
    from .fleet import stop_nodes

    stopped = stop_nodes()
    click.echo(f"fleet: stopped {len(stopped)} node(s) started here" if stopped else
               "fleet: no node started by `trtforge fleet up` is running here (`ray stop` ends every Ray process "
               "of yours)")


def _print_plan(loaded, recipe, steps, commands, verdicts) -> None:
    for step in steps:
        click.echo(f"{'run' if step.status == 'run' else 'ok ':<4} {step.name}")
        for reason in step.reasons if step.status == "run" else ():
            click.echo(f"       {reason}")
    where = f"TensorRT {loaded.trtexec.version} grammar" if loaded.trtexec else "no trtexec"
    for variant, command in commands.items():
        if isinstance(command, str):
            click.echo(f"\ntrtexec for {recipe.name}-{variant} ({where}): {command}")
            continue
        click.echo(f"\ntrtexec for {recipe.name}-{variant} ({command.get('where', where)}; model.onnx is "
                   f"artifacts/{command['model.onnx']}):")
        click.echo("  " + " ".join(command["argv"]))
        if variant in verdicts:  # the host's generation; a fleet class's lint runs on its own
            click.echo(f"  parser preflight: {verdicts[variant]}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
