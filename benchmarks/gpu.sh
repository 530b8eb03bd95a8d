#!/usr/bin/env bash
# The GPU benchmarks in one go: training pipeline, descriptor extraction and the model cost table,
# on CUDA with amp at 512 px (the study's settings), on SF-XS-like 512 px JPEGs made from the
# synthetic city. Estimated 5 minutes on one H200 with 16 CPU cores (budget: under 8; not yet run
# on one); needs no internet.
#
#   benchmarks/gpu.sh                      # JSON to $OUT if set, else benchmarks/out
#   DEVICE=cpu SIZE=64 ITERATIONS=4 BACKBONES=resnet18 COST_BACKBONES=resnet18 benchmarks/gpu.sh
#                                          # a quick check of this script without a GPU
#
# Runs from a checkout without installing it (src/ goes on PYTHONPATH). The machine's python3
# must have torch, torchvision, numpy, scipy, pillow, pyyaml, tqdm and faiss; where faiss is
# missing and .whl/ holds a faiss-cpu wheel (see benchmarks/README.md), that is installed to
# /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-512}
ITERATIONS=${ITERATIONS:-200}
BACKBONES=${BACKBONES:-resnet18,mobilenet_v3_small,efficientnet_b0}
COST_BACKBONES=${COST_BACKBONES:-resnet18,efficientnet_b0,efficientnet_b1,efficientnet_b2,efficientnet_v2_s,mobilenet_v3_small,mobilenet_v3_large,convnext_tiny,swin_tiny}
RESULTS=${OUT:-benchmarks/out}
DATA=${DATA:-/tmp/geoloc-benchmark-data}
WORKERS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))  # loader processes: all cores but the main process's

export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import faiss" 2>/dev/null; then
    if compgen -G ".whl/faiss_cpu-*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        echo "gpu.sh: $PYTHON cannot import faiss and .whl/ holds no faiss-cpu wheel (benchmarks/README.md)" >&2
        exit 2
    fi
fi
mkdir -p "$RESULTS"
"$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

common=(--device "$DEVICE" --precision amp --image-size "$SIZE" --data-root "$DATA")
step() { echo; echo "== $1 ($(date +%T))"; }

step "training pipeline: end-to-end vs compute-only, decoding and image cache"
"$PYTHON" benchmarks/train_pipeline.py "${common[@]}" --backbones "$BACKBONES" --source-pixels "$SIZE" \
    --num-workers "$WORKERS" --iterations "$ITERATIONS" --rounds 4 --image-cache \
    --out "$RESULTS/train_pipeline_$DEVICE.json"

step "descriptor extraction: end-to-end vs compute-only"
"$PYTHON" benchmarks/eval_pipeline.py "${common[@]}" --backbones "$BACKBONES" --source-pixels "$SIZE" \
    --num-workers "$WORKERS" --batch-size 32 --out "$RESULTS/eval_pipeline_$DEVICE.json"

step "model cost table"
"$PYTHON" benchmarks/model_cost.py "${common[@]}" --backbones "$COST_BACKBONES" --batch-size 32 \
    --out "$RESULTS/model_cost_$DEVICE.json"

step "model cost with cuDNN autotuning (what torch.backends.cudnn.benchmark would give the trainer)"
"$PYTHON" benchmarks/model_cost.py "${common[@]}" --backbones resnet18,efficientnet_b0 --batch-size 32 \
    --cudnn-benchmark --out "$RESULTS/model_cost_cudnn_benchmark_$DEVICE.json"
step "done"
