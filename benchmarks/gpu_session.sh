#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as one prepared script (at most 9.5 minutes,
# within one 10-minute device call; steps that end early leave time to the next):
#   bash benchmarks/gpu_session.sh [OUT_DIR]
# Run from the repository root on a machine with one CUDA GPU and uvireid installed
# (pip install -e .). Each step has its own time limit, writes its log to OUT_DIR and goes
# on when one fails; the figures belong in benchmarks/RESULTS.md with the card's name.
set -u
out="${1:-${OUT:-gpu_out}}"
mkdir -p "$out"
export UVIREID_CACHE="${UVIREID_CACHE:-$out/cache}"
py="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
run() {  # run NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? after $SECONDS s in all; tail:"
    tail -n 12 "$out/$name.log"
}
# issue 4: kNN + Jaccard + DBSCAN of 22,258 features on the GPU (goal <= 2 s, same partition)
run pseudo_labels 90 "$py" benchmarks/pseudo_labels.py --device cuda --part clustering --sizes 22258
# issue 5 item 9: the loop at the paper's size, its phases and the bare step, fp32 and bf16
run loop_bf16 130 "$py" benchmarks/training_loop.py --device cuda --amp --iters 100 --epochs 2
run loop_fp32 60 "$py" benchmarks/training_loop.py --device cuda --iters 30 --epochs 1
# issue 5 item 9: the demo recipe on the GPU (dataset and prior built on first use)
run demo 150 "$py" -m uvireid run demo device=cuda "output_dir=$out/runs"
# issue 3: re-rankers on CUDA against the CPU, then the CMFP comparisons and scalable CMFP
run rerank 90 "$py" benchmarks/rerank_speed.py --device cuda --check --skip-ref cmrr --scalable-sizes 10000,100000
# issue 3: scalable CMFP at 1M on the GPU through uvireid's ivf kNN (the device has no faiss)
run rerank_ivf 50 "$py" benchmarks/rerank_speed.py --device cuda --only scalable --scalable-sizes 1000000 --knn-backend ivf
echo "done in $SECONDS s; logs in $out"
