#!/usr/bin/env bash
# The Keras applications table's GPU column, measured: `transferlab bench` on a machine with
# an NVIDIA GPU, Keras' method exactly (batch 32, 1 warm-up step, then 10 repetitions of 30
# steps), every backbone of the lecture's table and then the rest of the registry.
#
#   bash benchmarks/bench_gpu.sh [OUT_DIR]        # default: bench-gpu/
#
# Needs the CUDA build of TensorFlow in the project's environment:
#   .venv/bin/pip install "tensorflow[and-cuda]==2.21.*"
# `transferlab bench` times on the GPU whenever TensorFlow sees one (the table's column then
# reads "Time (ms) per inference step (GPU)" and the ratio is to Keras' A100 figures); this
# script refuses to start without one, so a CPU machine never passes its figures off as GPU ones.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-gpu}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" - <<'PY'
import sys, tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    sys.exit("bench_gpu.sh: TensorFlow sees no GPU here. Fix: run on a GPU machine with "
             "pip install \"tensorflow[and-cuda]==2.21.*\" in this environment.")
print("GPUs:", ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus))
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -m transferlab.cli bench --backbones lecture --batch 32 --batches 30 --repeats 10 --out "$OUT/lecture"
"$PY" -m transferlab.cli bench --backbones all --batch 32 --batches 30 --repeats 10 --out "$OUT/all"
