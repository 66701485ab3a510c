#!/usr/bin/env bash
# The GPU figures in one command, a few minutes on one modern GPU: the full-width 256x256 ADM-G with its classifier
# (random weights), guided, at batch 1 and 8, in float32 / bfloat16 / float16, contiguous and channels_last, with and
# without torch.compile, attention through SDPA. Writes the table to $OUT/gpu_table.md when OUT is set (the device
# tool's output folder), else to docs/gpu_table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'expected a CUDA device, found none')"
# The project's own code on the path without installing it; its dependencies must be there (pip install -e . on a
# machine with network; the device tool's machines carry torch, and wheels for the rest can travel with the tree).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUTPUT="${OUT:-docs}/gpu_table.md"
python3 benchmarks/bench_gpu.py --layout adm-g-256 --device cuda --steps "${STEPS:-5}" --output "$OUTPUT"
echo "table written to $OUTPUT"
