#!/usr/bin/env bash
# Prepare .gpu/ for bench/gpu_session.sh on a GPU machine that cannot reach the package index:
#   .gpu/whl       wheels of the packages that machine's Python may lack (clip-anytorch, lpips, pytest:
#                  pure Python)
#   .gpu/fixtures  the two target photos the dry run's precision study reads (TargetCLIP's face_a.jpg
#                  and face_b.jpg, which the repository may not hold; the tiny models and the trace
#                  the CUDA checks read travel in tests/fixtures)
# Run here, from the repository root: bash bench/gpu_prepare.sh [FIXTURES_DIR]; then send .gpu along
# with the working tree (.gpu/ is git-ignored; the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures=${1:-../shared/fixtures}
py=${PYTHON:-python3}
mkdir -p .gpu/whl .gpu/fixtures
"$py" -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/whl "clip-anytorch>=2.5" "lpips>=0.1.4"
# pytest for the CUDA tests (tests/test_graph_step.py), with what it needs
"$py" -m pip download --quiet --only-binary=:all: -d .gpu/whl "pytest>=8"
for f in face_a.jpg face_b.jpg; do
    cp "$fixtures/$f" .gpu/fixtures/
done
du -sh .gpu/whl .gpu/fixtures
