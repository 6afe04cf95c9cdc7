"""doit entry point: load recipes/ and yield the tasks trtforge generates.

`doit list` shows them; `doit build:yolov8n-fp16` builds one variant; `doit cpu:yolov8n`
runs every stage that needs no GPU. See README.md.
"""

import os
from pathlib import Path

from doit.exceptions import InvalidDodoFile

from trtforge import session, tasks
from trtforge.errors import TrtforgeError

ROOT = Path(__file__).resolve().parent
os.chdir(ROOT)  # tasks name the project's files relative to it, even under `doit -d <elsewhere>`
DOIT_CONFIG = session.doit_config(ROOT / "artifacts")

try:
    session.begin(ROOT / "artifacts")
except TrtforgeError as exc:  # one line, exit 3, instead of a traceback
    raise InvalidDodoFile(str(exc)) from None

globals().update(tasks.doit_namespace(tasks.load_project_or_invalid(ROOT)))
