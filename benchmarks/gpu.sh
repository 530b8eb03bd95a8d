#!/usr/bin/env bash
# The GPU benchmarks in one go, on CUDA with amp at 512 px (the study's settings), on SF-XS-like
# 512 px JPEGs made from the synthetic city; needs no internet. Prints, per study backbone:
# training pipeline efficiency (end-to-end / compute-only images/s, with the image cache and
# decoding in loader workers), images/s, peak memory, descriptors/s at native resolution
# (the JPEGs are 512 px: native = 512); then torch.compile against eager, scaling over the GPUs
# present, and the projected GPU-hours of the 14-run study. Budget: under 8 minutes on one H200
# (not yet run on one: unmeasured).
#
#   benchmarks/gpu.sh                      # JSON to $OUT if set, else benchmarks/out
#   DEVICE=cpu PRECISION=fp32 SIZE=64 ITERATIONS=4 BACKBONES=resnet18 COST_BACKBONES=resnet18 benchmarks/gpu.sh
#                                          # a quick check of this script without a GPU (bf16 autocast
#                                          # on a CPU without bf16 units is 10x slower: fp32)
#
# Runs from a checkout without installing it (src/ goes on PYTHONPATH). The machine's python3
# must have torch, torchvision, timm, numpy, scipy, pillow, pyyaml, tqdm, tensorboard and faiss;
# where faiss is missing and .whl/ holds a faiss-cpu wheel (see benchmarks/README.md), that is
# installed to /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-amp}
SIZE=${SIZE:-512}
ITERATIONS=${ITERATIONS:-60}
STUDY=resnet18,efficientnet_b0,efficientnet_b1,efficientnet_b2,efficientnet_v2_s,mobilenet_v3_small,mobilenet_v3_large,convnext_tiny,swin_tiny
BACKBONES=${BACKBONES:-$STUDY}
COST_BACKBONES=${COST_BACKBONES:-$STUDY}
COMPILE_BACKBONES=${COMPILE_BACKBONES-resnet18}  # empty: skip (a CPU check: compiling takes minutes)
RESULTS=${OUT:-benchmarks/out}
DATA=${DATA:-/tmp/geoloc-benchmark-data}
WORKERS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))  # loader processes: all cores but the main process's
if [ "$DEVICE" = cuda ]; then
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
else
    GPUS=2  # CPU ranks for the check
fi
RANKS=$(seq -s, 1 "$GPUS")

export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
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

common=(--device "$DEVICE" --image-size "$SIZE" --data-root "$DATA")
step() { echo; echo "== $1 ($(date +%T))"; }

step "training pipeline, $PRECISION: end-to-end vs compute-only, image cache and decoding workers"
"$PYTHON" benchmarks/train_pipeline.py "${common[@]}" --precision "$PRECISION" --cudnn-benchmark --backbones "$BACKBONES" \
    --source-pixels "$SIZE" --num-workers "$WORKERS" --iterations "$ITERATIONS" --rounds 3 --image-cache \
    --out "$RESULTS/train_pipeline_$DEVICE.json"

step "training pipeline, fp32 (the study's three ResNet-18 fp32 runs)"
"$PYTHON" benchmarks/train_pipeline.py "${common[@]}" --precision fp32 --cudnn-benchmark --backbones resnet18 \
    --source-pixels "$SIZE" --num-workers "$WORKERS" --iterations "$ITERATIONS" --rounds 3 --image-cache \
    --out "$RESULTS/train_pipeline_fp32_$DEVICE.json"

if [ -n "$COMPILE_BACKBONES" ]; then
    step "torch.compile: the same pipeline compiled (compile_seconds apart)"
    "$PYTHON" benchmarks/train_pipeline.py "${common[@]}" --precision "$PRECISION" --cudnn-benchmark --compile \
        --backbones "$COMPILE_BACKBONES" --source-pixels "$SIZE" --num-workers "$WORKERS" \
        --iterations "$ITERATIONS" --rounds 3 --image-cache --out "$RESULTS/train_pipeline_compile_$DEVICE.json"
fi

step "descriptor extraction at native resolution (fp32, as evaluation runs): end-to-end vs compute-only"
"$PYTHON" benchmarks/eval_pipeline.py "${common[@]}" --precision fp32 --backbones "$BACKBONES" \
    --source-pixels "$SIZE" --num-workers "$WORKERS" --batch-size 32 --out "$RESULTS/eval_pipeline_$DEVICE.json"

step "model cost table: params, GFLOPs, latency, compute-only training images/s, peak memory"
"$PYTHON" benchmarks/model_cost.py "${common[@]}" --precision "$PRECISION" --cudnn-benchmark --backbones "$COST_BACKBONES" \
    --batch-size 32 --out "$RESULTS/model_cost_$DEVICE.json"

step "one run over 1..$GPUS processes: scaling efficiency"
"$PYTHON" benchmarks/ddp_scaling.py --device "$DEVICE" --precision "$PRECISION" --image-size "$SIZE" --ranks "$RANKS" \
    --data-root "$DATA" \
    --source-pixels "$SIZE" --num-workers $(( WORKERS / GPUS > 0 ? WORKERS / GPUS : 1 )) \
    --iterations "$ITERATIONS" --out "$RESULTS/ddp_scaling_$DEVICE.json"

step "projected GPU-hours of the study"
"$PYTHON" benchmarks/study_projection.py --train "$RESULTS/train_pipeline_$DEVICE.json" \
    --train "$RESULTS/train_pipeline_fp32_$DEVICE.json" --eval "$RESULTS/eval_pipeline_$DEVICE.json" \
    --out "$RESULTS/study_projection_$DEVICE.json"
step "done"
