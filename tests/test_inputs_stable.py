"""Every input a stage reads is the one doit records (issue 13): a file_dep that changes while
its stage runs (weights a training run is still writing, a plugin edited mid-build) fails
the task in one line and nothing is recorded, so the next run builds from the new bytes.

Real doit runs: a tiny torch factory model (16 px; only the bookkeeping is under test) whose
factory rewrites its weights file once while the export runs, and a surgery plugin pass that
edits its own file once."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import executed, make_project, run_doit, the_error, up_to_date

pytestmark = pytest.mark.slow

RECIPE = """\
model: {source: torch, factory: "netdef:tiny", weights: models/w.pt}
input: {name: x, shape: [1, 3, 16, 16], dynamic_axes: [0]}
surgery: [fold_constants, PASS]
variants:
  fp32: {precision: fp32}
"""
# The factory saves new weights the first time it runs, as a training run overwriting
# best.pt would while the export reads it; later runs leave them alone.
NETDEF = '''
from pathlib import Path

import torch


def tiny():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    marker = Path("models/rewritten")
    if REWRITE and not marker.exists():
        marker.touch()
        torch.save({k: v + 1 for k, v in net.state_dict().items()}, "models/w.pt")
    return net
'''
PLUGIN = '''
from pathlib import Path

from trtforge.surgery import surgery_pass


@surgery_pass("edit_self")
def edit_self(model):
    me = Path("plugins/edit.py")
    if EDIT and not me.read_text().endswith("# edited\\n"):
        me.write_text(me.read_text() + "# edited\\n")
    return model
'''


def project(tmp_path: Path, rewrite_weights: bool, edit_plugin: bool) -> Path:
    import torch

    root = make_project(tmp_path / "proj", {"tiny": RECIPE.replace("PASS", "edit_self")})
    (root / "netdef.py").write_text(NETDEF.replace("REWRITE", str(rewrite_weights)))
    (root / "plugins" / "edit.py").write_text(PLUGIN.replace("EDIT", str(edit_plugin)))
    (root / "models").mkdir()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    torch.save(net.state_dict(), root / "models" / "w.pt")
    return root


def test_weights_replaced_during_the_export_fail_it_and_are_exported_next_run(tmp_path):
    root = project(tmp_path, rewrite_weights=True, edit_plugin=False)
    first = run_doit(root, "export:tiny")
    assert first.returncode == 1, first.stdout + first.stderr
    assert the_error(first) == ("export:tiny: models/w.pt changed while the task was reading it; "
                                   "nothing was recorded: rerun once it is stable")
    again = run_doit(root, "export:tiny")  # the new weights are exported and recorded
    assert again.returncode == 0 and executed(again) == ["export:tiny"], again.stdout + again.stderr
    assert up_to_date(run_doit(root, "export:tiny")) == ["export:tiny"]


def test_a_plugin_edited_while_its_pass_runs_fails_surgery_and_reruns_it(tmp_path):
    root = project(tmp_path, rewrite_weights=False, edit_plugin=True)
    first = run_doit(root, "surgery:tiny")
    assert first.returncode == 1, first.stdout + first.stderr
    assert the_error(first).startswith("surgery:tiny: plugins/edit.py changed while the task was reading it")
    assert executed(run_doit(root, "surgery:tiny")) == ["surgery:tiny"]  # export stays done; surgery reruns
    assert up_to_date(run_doit(root, "surgery:tiny")) == ["export:tiny", "surgery:tiny"]
