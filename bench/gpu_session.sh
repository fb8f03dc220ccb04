#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one call (GPU time is scarce: one prepared script).
#
#   bash bench/gpu_session.sh OUTDIR [--cpu-dry-run]
#
# Sections, in priority order, each under its own time limit and all under one overall budget
# ($BUDGET seconds, default 500: sections that no longer fit are skipped and say so); a section that
# fails is reported and the next one runs:
#   cuda_check   the golden fixtures on CUDA in strict float32 (the reference's own trajectory)
#   train        full size, 4 sources: fast (exact), official and fast+bf16; 30 steps each, the first a
#                warm-up; "1000 steps" = 1000 x the median step (extrapolated), with peak memory
#   graph        the CUDA-graph training loop: its CUDA tests (replay == eager step for step, strict
#                float32) and bench/graph_step.py (fast vs graph replay per step for fast, fast+256px and
#                fast+bf16+256px at full size, checked against each other)
#   fused        the generator's fused Triton kernels (set_kernels("fused"), unmeasured until now): their
#                tests compiled on CUDA (tests/test_fused_kernels.py, quick ones), then bench/graph_step.py
#                --kernels fused for fast and fast+bf16+256px at full size: fast, graph replay and graph
#                run eagerly on the fused kernels, plus fast on the eager kernels in the same process,
#                their losses checked against each other (records: kernels=fused|eager)
#   candidates   K = 1 2 4 8 directions trained together (fast, 10 steps): seconds per direction
#   tuning       pivotal tuning of one photo at full size: PTI's step and STIT's (with the locality
#                probe), seconds per step and per photo, peak memory; video frames drawn 8 a batch with
#                the plain and with tuned weights, seconds per frame (bench/tuning.py)
#   breakdown    profile of 3 fast steps by operator category and resolution, with roofline numbers
#   precision    the exact objective fast+bf16 reaches vs exact: 5 seeds x 2 targets, 40 steps,
#                full-size models with random weights
#   encoder_variant  TargetCLIP's encoder: seconds to encode a target, seconds per training update and
#                peak memory (5 sources at 1024 px, all at once and one a pass, and the default run within
#                11.5 GiB as on a 12 GB card, with the chunk size it ended with)
#   compile      torch.compile of the generator: compile time cold and warm cache, step time vs eager
#                (at most 110 s per process)
# Every section saves JSON records (bench/records.py) in $WORK/records. OUTDIR receives only four
# files: summary.txt, run.log, breakdown_cuda.md and results.tar.gz (records + logs), so it suits
# a folder copied back from a remote machine with a limit on files. To publish: unpack
# results.tar.gz, copy records/*.json into bench/results/ and run `python -m bench.tables`.
#
# Python: $PYTHON if set, else python3 when it imports torch, else ./run's .venv (created on first
# use; it needs the package index). Packages the machine lacks (clip-anytorch on the GPU image) are
# installed from .gpu/whl/*.whl when present (made by `bash bench/gpu_prepare.sh`). The tiny models
# and the trace come from tests/fixtures; the dry run's two target photos (TargetCLIP's, not in the
# repository) from $FIXTURES, else .gpu/fixtures, else ../shared/fixtures.
#
# SECTIONS="name ..." runs only the sections named (a rerun of those that failed).
#
# --cpu-dry-run runs every section on the CPU with the tiny fixture models and a few steps, to prove
# the script works before GPU time is spent on it (its numbers mean nothing).
set -u
out=${1:?usage: bash bench/gpu_session.sh OUTDIR [--cpu-dry-run]}
dry=0
[ "${2:-}" = "--cpu-dry-run" ] && dry=1
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=${WORK:-output/gpu-run}
rm -rf "$work"
mkdir -p "$work/records" "$work/logs"
export PYTHONUNBUFFERED=1
budget=${BUDGET:-$([ $dry = 1 ] && echo 1500 || echo 500)}
began=$(date +%s)
log="$out/run.log"
: > "$log"
: > "$out/summary.txt"
say() { echo "$@" | tee -a "$log"; }

# ---------------------------------------------------------------- python and packages
py=${PYTHON:-}
if [ -z "$py" ]; then
    if python3 -c "import torch" 2>/dev/null; then py=python3; else ./run bench --help > /dev/null && py=.venv/bin/python; fi
fi
if ! "$py" -c "import pytest; from essence.networks import import_clip_model; import_clip_model(); import lpips" 2>/dev/null; then
    if ls .gpu/whl/*.whl > /dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/essence-site \
            .gpu/whl/*.whl 2>&1 | tail -2
        export PYTHONPATH=/tmp/essence-site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
fixtures=${FIXTURES:-}
if [ -z "$fixtures" ]; then
    if [ -d .gpu/fixtures ]; then fixtures=.gpu/fixtures; else fixtures=../shared/fixtures; fi
fi
say "== $(date -u +%FT%TZ) python $("$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1)"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
models=tests/fixtures
say "== fixtures: $models, photos: $fixtures; budget ${budget}s; load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"

if [ $dry = 1 ]; then
    device=cpu
    tiny=(--generator "$models/stylegan2_tiny64.pt" --guide "$models/clip_tiny.pt")
    threads=(--threads 1)
    train=(--train-steps 3 --models-for-timing "${tiny[@]}")
    study=("${tiny[@]}")
    precision=("${tiny[@]}" --target "$fixtures/face_a.jpg" "$fixtures/face_b.jpg" --seeds 0 1 --quality-steps 3)
    compile_steps=8
    compile_timeout=500  # Inductor's C++ code generation on two shared cores: about 250 s cold for the tiny models
    export OMP_NUM_THREADS=1
else
    device=cuda
    threads=()
    train=(--train-steps 30)
    study=()
    precision=(--random-weights --seeds 0 1 2 3 4 --quality-steps 40)
    compile_steps=20
    compile_timeout=110  # per process; the warm one gets at most the cold one's time + 30 s
fi
bench=("$py" -m bench --device "$device" --records "$work/records" "${threads[@]}")

# section NAME SECONDS COMMAND...: run under the smaller of its own limit and what is left of the budget
section() {
    local name=$1 limit=$2 start left rc
    shift 2
    if [ -n "${SECTIONS:-}" ] && [[ " $SECTIONS " != *" ${name%_k*} "* ]]; then
        return  # not asked for: SECTIONS="cuda_check graph_tests ..." reruns only those
    fi
    start=$(date +%s)
    left=$((budget - (start - began)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        say "== $name: skipped, ${left}s of the budget left"
        echo "$name: skipped (budget)" >> "$out/summary.txt"
        return
    fi
    say "== $name (limit ${limit}s)"
    timeout --kill-after=15 "$limit" "$@" > "$work/logs/$name.log" 2>&1
    rc=$?
    grep -v "Warning\|warnings.warn\|USDT\|gpuGetDeviceCount" "$work/logs/$name.log" | tee -a "$log" | tail -40
    local status=ok
    { [ $rc = 124 ] || [ $rc = 137 ]; } && status="stopped at its ${limit}s limit"
    [ $rc != 0 ] && [ $rc != 124 ] && [ $rc != 137 ] && status="FAILED (exit $rc)"
    echo "$name: $status, $(($(date +%s) - start)) s" | tee -a "$out/summary.txt" >> "$log"
}

section cuda_check 90 "$py" bench/cuda_check.py "$models" --no-tf32 --records "$work/records"
section train 120 "${bench[@]}" --only train --modes fast official fast+bf16 --repeats 1 "${train[@]}" \
    --json "$work/train.json"
section graph_tests 90 "$py" -m pytest tests/test_graph_step.py -q -p no:cacheprovider \
    "tests/test_stylegan2.py::test_every_tensor_of_a_built_or_loaded_generator_is_on_its_device"
if [ $dry = 1 ]; then
    section graph_step 150 "$py" bench/graph_step.py --device cpu --fixtures "$models" --modes fast --steps 6 \
        --window 2 --check-steps 3 --json "$work/records/cpu_graph-step.json"
else
    section graph_step 120 "$py" bench/graph_step.py --device cuda --json "$work/records/cuda_graph-step.json"
fi
# the fused kernels beside eager and graph, same machine, same run. The dry run has no CUDA: Triton's
# interpreter runs the kernels on the CPU (TRITON_INTERPRET=1, this section only), 4 steps, no tests
# (they are the CPU suite's own).
if [ $dry = 1 ]; then
    section fused 200 env TRITON_INTERPRET=1 "$py" bench/graph_step.py --device cpu --fixtures "$models" \
        --kernels fused --modes fast --steps 4 --window 2 --check-steps 2 --json "$work/records/cpu_fused-step.json"
else
    section fused 200 bash -c '"$0" -m pytest tests/test_fused_kernels.py -q -m "not slow" -p no:cacheprovider; t=$?
        "$0" bench/graph_step.py --device cuda --kernels fused --modes fast fast+bf16+256px --json "$1" || exit
        exit $t' "$py" "$work/records/cuda_fused-step.json"
fi
if [ $dry = 1 ]; then
    section candidates 150 "${bench[@]}" --only candidates --candidates 1 2 "${train[@]}" --json "$work/candidates.json"
else  # one process per K, so a K cut short by the budget keeps the others' records
    for k in 1 2 4 8; do
        section candidates_k$k 45 "${bench[@]}" --only candidates --candidates $k --train-steps 10 \
            --json "$work/candidates_k$k.json"
    done
fi
if [ $dry = 1 ]; then
    section tuning 120 "$py" bench/tuning.py --device cpu --fixtures "$models" --steps 8 --records "$work/records"
else
    section tuning 90 "$py" bench/tuning.py --device cuda --steps 40 --records "$work/records"
fi
# the encoder variant: one essence in one pass, and the encoder's training (full size, random weights;
# all 5 sources at once, one a pass, then as on a 12 GB card). The dry run times the encoding only: a full-size training
# step takes minutes on the CPU.
if [ $dry = 1 ]; then
    section encoder_variant 120 "${bench[@]}" --only encode --repeats 2 --json "$work/encoder_variant.json"
else
    section encoder_variant 210 "${bench[@]}" --only encode encoder_train --train-steps 10 \
        --json "$work/encoder_variant.json"
fi
section breakdown 100 "${bench[@]}" --only breakdown --profile-steps 3 "${study[@]}" --breakdown-md "$work/breakdown.md" \
    --json "$work/breakdown.json"
section precision 130 "${bench[@]}" --only precision "${precision[@]}" --json "$work/precision.json"
section compile $((2 * compile_timeout + 40)) "${bench[@]}" --only compile --compile-steps $compile_steps \
    --job-timeout $compile_timeout "${study[@]}" \
    --compile-cache "$work/inductor-cache" --json "$work/compile.json"

rm -rf "$work/inductor-cache"
cp "$work/breakdown.md" "$out/breakdown_cuda.md" 2>/dev/null
[ $dry = 1 ] && [ -f "$out/breakdown_cuda.md" ] && mv "$out/breakdown_cuda.md" "$out/breakdown_cpu_dry_run.md"
tar czf "$out/results.tar.gz" -C "$work" records logs $(cd "$work" && ls ./*.json ./*.md 2>/dev/null)
say "== summary ($(($(date +%s) - began)) s in all; records: $(ls "$work/records" | wc -l) files)"
cat "$out/summary.txt" | tee -a "$log"
