#!/usr/bin/env bash
# GPU check for the model crate (issue 3, item 9). Run on a machine with CUDA from the
# repository root: bash model/bench/gpu.sh [STEPS]. It
#   1. builds the device check with the CUDA backend,
#   2. compares a tiny fixed batch between CPU and CUDA (embeddings and one step's losses,
#      relative tolerance 1e-3) and trains STEPS (default 300) steps at base size at the
#      shapes of shared/bench/torch_unimo_step.py, failing unless the loss falls,
#   3. runs the PyTorch baseline at the same shapes on CUDA for comparison,
# and prints the card's name and every result as JSON lines.
set -euo pipefail
steps="${1:-300}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
torch_script="${TORCH_BASELINE:-$root/../shared/bench/torch_unimo_step.py}"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi not found: is this a CUDA machine?" >&2
fi

cargo build --release -p unimod-model --features cuda --example device_check
./target/release/examples/device_check --size base --steps "$steps" --batch 32

if [ -f "$torch_script" ] && python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python3 "$torch_script" --size base --batch 32 --device cuda --steps 30
else
  echo "PyTorch with CUDA (or $torch_script) not available: baseline skipped" >&2
fi
