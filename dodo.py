"""doit entry point: load recipes/ and yield the tasks trtforge generates.

`doit list` shows them; `doit build:yolov8n-fp16` builds one variant; `doit cpu:yolov8n`
runs every stage that needs no GPU. See README.md.
"""

from pathlib import Path

from doit.exceptions import InvalidDodoFile

from trtforge import session, tasks
from trtforge.errors import TrtforgeError

ROOT = Path(__file__).resolve().parent
DOIT_CONFIG = session.doit_config(ROOT / "artifacts")

try:
    session.begin(ROOT / "artifacts")
    PROJECT = tasks.load_project(ROOT)
except TrtforgeError as exc:  # one line, exit 3, instead of a traceback
    raise InvalidDodoFile(str(exc)) from None


def task_export():
    """export the recipe's model to ONNX"""
    yield from tasks.export_tasks(PROJECT)


def task_surgery():
    """run the recipe's graph-surgery passes"""
    yield from tasks.surgery_tasks(PROJECT)


def task_calib():
    """INT8 calibration cache from the recipe's images"""
    yield from tasks.calib_tasks(PROJECT)


def task_quantize():
    """precision-transformed ONNX (FP16 AutoCast, INT8 Q/DQ)"""
    yield from tasks.quantize_tasks(PROJECT)


def task_engine():
    """build the TensorRT engine with trtexec"""
    yield from tasks.engine_tasks(PROJECT)


def task_reference():
    """FP32 reference outputs on the verification images"""
    yield from tasks.reference_tasks(PROJECT)


def task_check():
    """accuracy gate against the FP32 reference"""
    yield from tasks.check_tasks(PROJECT)


def task_package():
    """reproducible release archive of a built variant"""
    yield from tasks.package_tasks(PROJECT)


def task_kit():
    """build kit for the target device (no Python needed there)"""
    yield from tasks.kit_tasks(PROJECT)


def task_build():
    """build a variant: everything up to its engine"""
    yield from tasks.build_tasks(PROJECT)


def task_cpu():
    """every stage that runs without a GPU"""
    yield from tasks.cpu_tasks(PROJECT)
