#!/usr/bin/env bash
# The GPU figures of issue 28 (speed II) that benchmark/gpu_check.py does not measure, in one call after it; each
# part writes its results as it ends, so a call cut short keeps the parts it finished. Budget: about 6.5 minutes on
# one H100/H200 (estimate: compiling dominates; see docs/speed.md, "What a GPU session measures next").
#
#   bash benchmark/gpu_speed_ii.sh                                   # results in benchmark/results/speed_ii/
#   PARTS="compile tf32_domain" bash benchmark/gpu_speed_ii.sh       # only these parts (names below)
#
# 1. TF32 (--matmul-precision high) against float32 on the graph path, and a 45-member hopper domain sweep (3 datasets
#    x 15 members), for the three scripts: member-updates/s (first: the cheaper part, and a target's).
# 2. --compile on CUDA: OFQL alone and 16 members, the scripts' CUDA graph against torch.compile inside it (what
#    --compile runs) and torch.compile(mode="reduce-overhead"); each compiled iteration's compile seconds, and
#    inductor's counters (cudagraph_skips: a reduce-overhead iteration that inductor did not graph).
# 3. What TF32 changes in the numbers: ofql.py, dql.py and fql.py on the GPU, float32 twice (the floor: two runs of
#    the same flags) and TF32 against float32 (tools/compare_runs.py, the largest relative difference).
# 4. The evaluation envs on that machine's cores: one process against 4 and 15 workers, 160 envs (a sweep's), and
#    Table 1's evaluation hours at those step times (benchmark/eval_speed.py; CPU only, about a minute).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmark/results/speed_ii}
NAMES="tf32_domain compile floor tf32_numbers eval_workers"
for name in ${PARTS:-}; do
    [[ " $NAMES " == *" $name "* ]] || { echo "gpu_speed_ii.sh: unknown part '$name' in PARTS ($NAMES)"; exit 2; }
done
mkdir -p "$RESULTS"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_speed_ii.sh: no CUDA device')" || exit 1
python -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '| commit', __import__('os').environ.get('COMMIT') or __import__('subprocess').getoutput(
'git rev-parse --short HEAD 2>/dev/null || echo unknown'))" \
    | tee "$RESULTS/parts.txt"
DATA=benchmark/results/gpu_check/work/hopper-random.hdf5  # gpu_check's recorded file, else one recorded here
[ -f "$DATA" ] || {
    DATA=$RESULTS/hopper-random.hdf5
    python -c "import sys; sys.path.insert(0, 'benchmark'); import gpu_check
gpu_check.record_hopper(sys.argv[1], 5000, 0)" "$DATA"
}
# part NAME TIMEOUT_S COMMAND...: its output in $RESULTS/NAME.log, its exit code and seconds in $RESULTS/parts.txt
part() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ -z ${PARTS:-} || " $PARTS " == *" $name "* ]] || return 0  # PARTS: a space-separated subset of the names
    echo "== $name: $*" | tee "$RESULTS/$name.log"
    echo "$name started" >>"$RESULTS/parts.txt"  # a part cut by an outer timeout leaves this line and its log
    timeout "$limit" "$@" >>"$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start)) command: $*" | tee -a "$RESULTS/parts.txt"
    tail -n 30 "$RESULTS/$name.log"
}
part tf32_domain 120 python benchmark/sweep_speed.py --device cuda --env-id hopper-medium-v2 --members 45 \
    --datasets 3 --paths cuda_graph --matmul-precision highest high --updates 50 --rounds 3 --warmup 3 \
    --out-dir "$RESULTS/tf32_domain"
part compile ${COMPILE_LIMIT_S:-300} python benchmark/sweep_speed.py --device cuda --algorithms ofql --members 16 \
    --paths cuda_graph compile_graph compile_reduce_overhead --updates 50 --rounds 3 --warmup 3 \
    --out-dir "$RESULTS/compile"
FLAGS="--total-steps 1000 --eval-every 1000 --eval-episodes 2 --log-every 100"
part floor 150 python tools/compare_runs.py --base . --cuda --sweeps --dataset-path "$DATA" --flags="$FLAGS" \
    --out-dir "$RESULTS/floor"
part tf32_numbers 150 python tools/compare_runs.py --base . --cuda --sweeps --dataset-path "$DATA" --flags="$FLAGS" \
    --base-flags="--matmul-precision high" --out-dir "$RESULTS/tf32_numbers"
part eval_workers 120 python benchmark/eval_speed.py --workers 1 4 15 --num-envs 160 --steps 30 --rounds 2 \
    --out-dir "$RESULTS/eval_workers"
cat "$RESULTS/parts.txt"
