#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, as one prepared script (about 12 minutes):
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
run pseudo_labels 150 "$py" benchmarks/pseudo_labels.py --device cuda --part clustering --sizes 22258
# issue 5 item 9: the loop at the paper's size, its phases and the bare step, fp32 and bf16
run loop_bf16 200 "$py" benchmarks/training_loop.py --device cuda --amp --iters 100 --epochs 2
run loop_fp32 150 "$py" benchmarks/training_loop.py --device cuda --iters 50 --epochs 1
# issue 5 item 9: the demo recipe on the GPU (dataset and prior built on first use)
run demo 240 "$py" -m uvireid run demo device=cuda "output_dir=$out/runs"
# issue 3: re-rankers on CUDA against the CPU, then the CMFP comparisons and scalable CMFP
run rerank 150 "$py" benchmarks/rerank_speed.py --device cuda --check --skip-ref cmrr --scalable-sizes 10000,100000
echo "done in $SECONDS s; logs in $out"
