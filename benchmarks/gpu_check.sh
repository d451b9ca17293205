#!/usr/bin/env bash
# The GPU check of issue 13, in one go (about 5-8 minutes on one modern GPU; not yet run on one):
#   1. step throughput of DGMw and DGMa, MNIST and CIFAR-10 shapes, XLA off and on, tasks 1
#      and 10, the reference classifier schedule, chunks of 1 and 50 steps a compiled call (benchmarks/step_throughput.py), with
#      each configuration's peak GPU memory;
#   1b. a whole task of the main command (MNIST 10x1, defaults) at tasks 1 and 10, by part:
#      replay draw, iterations with the epoch-end scoring, task end, evaluation, exports;
#   2. a short CIFAR-10 DGMw run (5 tasks of 2 classes, --steps_per_task steps each): its
#      seconds a task, from results.json;
#   3. the peak GPU memory over everything (nvidia-smi, sampled every second; TensorFlow
#      allocates as it grows, TF_FORCE_GPU_ALLOW_GROWTH, so the figure is what was used).
#
#   benchmarks/gpu_check.sh [--data_dir=DIR] [--steps_per_task=N]   # on the GPU machine
#   benchmarks/gpu_check.sh --smoke                                # CPU: tiny, checks the script (tests/test_benchmark.py)
#
# CIFAR-10 must be in the TFDS data dir (python -m dgm_keras.prepare_data, README), or --smoke
# uses MNIST, which is built offline when missing. Copy the printed figures into
# docs/RESULTS.md ("Speed") with the machine they came from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SMOKE=0
DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
STEPS=300
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    --data_dir=*) DATA_DIR=${arg#--data_dir=} ;;
    --steps_per_task=*) STEPS=${arg#--steps_per_task=} ;;
    *) echo "gpu_check: unknown argument $arg; allowed: --smoke, --data_dir=DIR, --steps_per_task=N" >&2; exit 2 ;;
  esac
done
export TF_FORCE_GPU_ALLOW_GROWTH=true
OUT=$(mktemp -d)
trap 'kill "$SAMPLER" 2>/dev/null || true; rm -rf "$OUT"' EXIT

# Peak GPU memory over the whole check, in MiB (nvidia-smi absent on CPU machines: "-").
SAMPLER=
if command -v nvidia-smi >/dev/null 2>&1; then
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >>"$OUT/gpu_mem" 2>/dev/null; sleep 1; done) &
  SAMPLER=$!
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))" 2>/dev/null
fi

start=$(date +%s)
echo "== 1. step throughput (batch 64, reference widths)"
if [[ $SMOKE == 1 ]]; then
  "$PY" benchmarks/step_throughput.py --smoke --modes=weight --shapes=mnist --xla=false --tasks=1 --schedules=combined
else
  "$PY" benchmarks/step_throughput.py --modes=weight,activation --shapes=mnist,cifar10 --xla=false,true \
    --tasks=1,10 --schedules=reference --steps_per_execution=1,50 --steps=100 --warmup=50
  echo "== 1b. a whole task of the main command (MNIST, the defaults) at tasks 1 and 10, by part"
  "$PY" benchmarks/step_throughput.py --modes=weight --shapes=mnist --xla=true --tasks=1,10 --schedules=reference \
    --steps=10 --warmup=5 --whole_task "--data_dir=$DATA_DIR"
fi

echo "== 2. a short DGMw run: seconds a task"
if [[ $SMOKE == 1 ]]; then
  RUN=(--dataset=mnist --classes_per_task=5 --steps_per_task=2 --validation_fraction=0 --checkpoint_every=0)
else
  RUN=(--dataset=cifar10 --classes_per_task=2 "--steps_per_task=$STEPS")
fi
"$PY" -m dgm_keras.train --method=dgmw "${RUN[@]}" "--data_dir=$DATA_DIR" "--workdir=$OUT/run" \
  "--export_dir=$OUT/exp" --run_name=gpu_check --progress=line >"$OUT/run.log" 2>&1 || { tail -20 "$OUT/run.log"; exit 1; }
"$PY" - "$OUT/run/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
hp = r["hyperparameters"]
print(f"{r['scenario']['dataset']} {r['scenario']['num_tasks']} tasks x {hp['steps_per_task']} steps, XLA {hp['jit_compile']}: "
      f"seconds a task {r['task_seconds']}, A_t {[round(100 * a, 2) for a in r['A_t']]}")
EOF

echo "== 3. peak GPU memory"
if [[ -n $SAMPLER ]]; then
  kill "$SAMPLER" 2>/dev/null || true
  echo "peak GPU memory used (nvidia-smi, all processes): $(sort -n "$OUT/gpu_mem" | tail -1) MiB"
else
  echo "peak GPU memory: - (no nvidia-smi: not a GPU machine)"
fi
echo "gpu_check: done in $(( $(date +%s) - start )) s"
