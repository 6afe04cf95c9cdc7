"""doit entry point of the repository's demo project: `doit list`, `doit build:yolov8n-fp16`,
`doit cpu:yolov8n` (every stage that needs no GPU). See README.md."""

from trtforge.project import doit_globals

globals().update(doit_globals(__file__))
