#!/usr/bin/env bash
# Every GPU measurement in docs/benchmarks.md, in one run (GPU time is scarce: one prepared script).
#
#   bash bench/gpu_session.sh OUTDIR [FIXTURES_DIR] [BASELINE_DIR]
#
# Order = what matters most if time runs out: the fixtures on CUDA, the generator and e4e throughput,
# the training modes, the baseline side by side (BASELINE_DIR holds an older checkout), the
# profiler's table of a fast step, and the CUDA-graph experiment (bench/graph_step.py). Each section
# writes into OUTDIR.
set -u
out=${1:-output/gpu}
fixtures=${2:-../shared/fixtures}
baseline=${3:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
bench() { "$py" -m bench --device cuda "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" bench/cuda_check.py "$fixtures" 2>&1 | grep -v Warning | tee "$out/cuda_check.txt"
"$py" bench/cuda_check.py "$fixtures" --no-tf32 2>&1 | grep -v Warning | tee -a "$out/cuda_check.txt"

bench --only generator --batches 1 4 --repeats 5 --json "$out/generator.json"
bench --only encoder --batches 128 --repeats 5 --json "$out/encoder.json"
bench --only train --train-steps 20 --modes official fast fast+chunk2 fast+recompute512 fast+bf16 fast+256px \
    fast+bf16+256px --json "$out/train.json"

echo "== the generator's two upsampling methods, and the baseline checkout, side by side"
for job in '{"kind": "train", "mode": "fast", "steps": 20, "upsample": "transposed"}' \
           '{"kind": "generator", "batch": 4, "dtype": "float32", "backward": true, "upsample": "transposed"}'; do
    bench --repeats 5 --one "$job" | tail -1 | tee -a "$out/extra.jsonl"
done
if [ -n "$baseline" ]; then
    # checkouts before the benchmark moved out of the library ran it as `python -m essence bench`
    if [ -f "$baseline/bench/__main__.py" ]; then baseline_bench=bench; else baseline_bench="essence bench"; fi
    for job in '{"kind": "train", "mode": "fast", "steps": 20}' \
               '{"kind": "generator", "batch": 4, "dtype": "float32", "backward": true}'; do
        (cd "$baseline" && "$py" -m $baseline_bench --device cuda --repeats 5 --one "$job") | tail -1 \
            | sed 's/^{/{"baseline": true, /' | tee -a "$out/extra.jsonl"
    done
fi

echo "== profile of 3 'fast' steps"
bench --profile fast > "$out/profile_fast.txt" 2>&1
grep -v "^ *void\|^ *sm[0-9]" "$out/profile_fast.txt" | head -30 | cut -c1-57,110-160

echo "== host overhead: one step's forward + backward, eager vs replayed as a CUDA graph"
for options in "" "--render-size 256"; do
    "$py" bench/graph_step.py $options 2>&1 | grep -v Warning | tee -a "$out/graph_step.txt"
done

