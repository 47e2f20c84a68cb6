#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as one prepared script:
#   bash benchmarks/gpu_session.sh [OUT_DIR]
#   STEPS="tests_cuda overhead overhead_bf16" bash benchmarks/gpu_session.sh [OUT_DIR]
# Session 19 ran, one step per call of this script, in this order: tests_cuda tests_graphs
# rerank overhead_kernels loss_products loop_phases demo (amp_smoke did not fit). The
# next device session (after session 31): STEPS="tests_cuda tests_graphs memory_updates
# loop_phases amp_smoke" (the memory updates' Gram path, new in session 19, has not run on
# a GPU; sessions 20-29 had no device. Session 28's: the CUDA RNG state's round trip
# through a checkpoint, in tests_cuda. Session 21's CUDA paths: the triplet losses and
# kmeans on the device in tests_cuda, the graph capture with a loss's pre-BN features in
# tests_graphs; session 22's: CMFP propagated on the device for uvireid match, in
# tests_cuda; session 23's: the weights' fingerprint of a CUDA model, in tests_cuda).
# The steps' time limits add up to about 20 minutes, more than one 10-minute device call
# (and a session's 15 minutes of device time): STEPS="name ..." runs only the named steps,
# in the script's order; steps that end early leave time to the next. Run from the
# repository root on a machine with one CUDA GPU and uvireid importable (pip install -e .,
# or PYTHONPATH=$PWD where pip cannot reach an index). Each step has its own time limit,
# writes its log to OUT_DIR and goes on when one fails; the figures belong in
# benchmarks/RESULTS.md with the card's name. OUT_DIR gets a log per step and the demo's
# metrics (the device tool brings back 8 files); the dataset cache and the run folders go to $WORK (default
# /tmp/uvireid-gpu). Set UVIREID_CACHE to a cache holding the demo's prior to skip its
# ~2-minute build. tests_cuda needs every package uvireid requires (hdbscan among them: an
# image without it needs its wheel installed first). With the device tool, a cache inside
# the working tree (UVIREID_CACHE=$PWD/.gpucache) must be carried on EVERY call: a later
# call without it in `carry` finds it removed, and rebuilds the dataset and the prior
# (session 19's second call spent its 100 s doing that).
set -u
out="${1:-${OUT:-gpu_out}}"
work="${WORK:-/tmp/uvireid-gpu}"
mkdir -p "$out" "$work"
export UVIREID_CACHE="${UVIREID_CACHE:-$work/cache}"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
"$py" -c "import torch, uvireid; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
run() {  # run NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
        return 0
    fi
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? after $SECONDS s in all; tail:"
    tail -n 12 "$out/$name.log"
}
# every test with a CUDA case (the CUDA paths against the CPU result)
run tests_cuda 60 "$py" -m pytest -q -p no:cacheprovider tests/test_devices.py tests/engine/test_trainer.py tests/models/test_backbone.py tests/rerank/test_api.py tests/rerank/test_cmfp.py tests/engine/test_matching.py tests/engine/test_checkpoint.py -k "device or channels_last or placed or cuda"
# issue 5 item 8: one SALCR step against the plain step at the paper's size (fp32, then bf16),
# the host's queueing time against the kernels' time, and the top kernels of the SALCR step
ovh=("$py" benchmarks/training_overhead.py --device cuda --arch resnet50 --height 288 --width 144 --memory 11000 --clusters 500 --repeats 10)
run overhead 60 "${ovh[@]}" --kernels 25
run overhead_bf16 60 "${ovh[@]}" --amp --kernels 25
# the same steps with TF32 float32 products (the losses' memory products run in float32),
# then the bf16 SALCR step with its losses' forward and backward as CUDA graphs
run overhead_x 100 bash -c '"$@" --tf32; "$@" --amp --tf32; "$@" --amp --graphs --kernels 5' _ "${ovh[@]}"
# issue 5: the demo recipe on the GPU (dataset built on first use, the prior too unless cached)
run demo 120 "$py" -m uvireid run demo device=cuda "output_dir=$work/runs"
find "$work/runs" -name metrics.jsonl 2>/dev/null -exec cp {} "$out/demo_metrics.jsonl" \; 2>/dev/null
# sessions 14-18's changes on CUDA: a short bf16 run (the precision recorded, extraction
# under autocast, checkpoints written with signals held; its table and the precision)
run amp_smoke 90 bash -c 'r="$2/amp"; "$1" -m uvireid run demo device=cuda "output_dir=$r" --no-report train.amp=true stages.0.epochs=1 stages.0.iters_per_epoch=20 stages.1.epochs=1 stages.1.iters_per_epoch=20 2>&1 | tr "\r" "\n" | grep -i "mean\|warn\|error\|run folder"; grep -rh "precision" "$r" --include=manifest.json' _ "$py" "$work"
# issue 3: re-rankers on CUDA against the CPU, then the CMFP comparisons and scalable CMFP
run rerank 90 "$py" benchmarks/rerank_speed.py --device cuda --check --skip-ref cmrr --scalable-sizes 10000,100000
# issue 5 item 9: the loop at the paper's size, its phases and the bare step, bf16
run loop_bf16 170 "$py" benchmarks/training_loop.py --device cuda --amp --iters 60 --epochs 2 --dcl-epochs 1
# train.cuda_graphs and train.tf32: their CUDA tests, the step, and the loop with both
run tests_graphs 90 "$py" -m pytest -q -p no:cacheprovider tests/engine/test_graphs.py tests/data/test_transforms.py tests/engine/test_trainer.py -k "cuda or graph"
run overhead_graphs 100 bash -c '"$@" --tf32 --graphs; "$@" --amp --tf32 --graphs' _ "${ovh[@]}"
# where the SALCR step's kernel time goes once the host is out of the way (bf16, TF32):
# the top kernels of the eager step (a graph's kernels show as one "Graphed" op)
run overhead_kernels 60 "${ovh[@]}" --amp --tf32 --kernels 30
# GPCR's part-logit products (163 of the 181 GFLOP FGSAL + GPCR add) in float32, TF32,
# bf16 inputs with a float32 output, and bf16: time, and the logits' error against float64
run loss_products 40 "$py" benchmarks/loss_products.py --device cuda
run loop_graphs 200 "$py" benchmarks/training_loop.py --device cuda --amp --iters 60 --epochs 2 --dcl-epochs 2 --cuda-graphs --tf32
# where a graphed SALCR step's time goes, phase by phase (augment, targets, forward,
# losses, backward, optimizer, memory updates: host time and time on the device's stream)
run loop_phases 200 "$py" benchmarks/training_loop.py --device cuda --amp --iters 60 --epochs 2 --dcl-epochs 1 --cuda-graphs --tf32 --phases
# the memory updates of one SALCR step: the rounds against the Gram path (launches, time)
run memory_updates 40 "$py" benchmarks/memory_updates.py --device cuda
# issue 4: kNN + Jaccard + DBSCAN of 22,258 features on the GPU (goal <= 2 s, same partition)
run pseudo_labels 60 "$py" benchmarks/pseudo_labels.py --device cuda --part clustering --sizes 22258
# the SALCR step with its losses through torch.compile (the first call compiles, ~90 s on
# an H100; an earlier run: 59 ms compiled against 41 eager)
run overhead_bf16_compiled 240 "${ovh[@]}" --amp --kernels 25 --compile
# the loop again with the losses compiled (train.compile_losses; the first step of each
# stage compiles, so the stage's warm second epoch is the figure)
run loop_bf16_compiled 240 "$py" benchmarks/training_loop.py --device cuda --amp --iters 100 --epochs 2 --dcl-epochs 2 --compile-losses
# issue 3: scalable CMFP at 1M on the GPU through uvireid's ivf kNN (no faiss needed)
run rerank_ivf 40 "$py" benchmarks/rerank_speed.py --device cuda --only scalable --scalable-sizes 1000000 --knn-backend ivf
echo "done in $SECONDS s; logs in $out"
