#!/usr/bin/env bash
# bench/gpu-lent.sh: runs bench/gpu.sh on a lent GPU machine that has no Rust toolchain and no
# network, from binaries built here and carried in .gpu/ (ignored by git):
#
#   .gpu/target/release/{unimod,unimod-synth}.xz, .gpu/target/release/examples/device_check.xz
#       (cargo build --release --features cuda ..., stripped, xz-compressed),
#   .gpu/bin/tansu.xz (the broker, for the daemon run), .gpu/torch_unimo_step.py (the PyTorch
#       baseline from ../shared/bench).
#
# Results go to $OUT (the lending tool's folder): gpu.tgz (everything bench/gpu.sh wrote,
# without the broker's database and the checkpoint store), summary.json, gpu.log; gpu.tgz is
# refreshed every 15 s so a run cut short still brings back what it finished.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:?OUT is the folder that comes back}
carry=$root/.gpu
unxz_py() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; }
for f in "$carry"/bin/*.xz "$carry"/target/release/*.xz "$carry"/target/release/examples/*.xz; do
    [[ -f $f ]] || continue
    unxz_py "$f" "${f%.xz}" && chmod +x "${f%.xz}"
done
export PATH=$carry/bin:$PATH
work=/tmp/gpu-out
rm -rf "$work" && mkdir -p "$work"
snapshot() {
    tar czf "$out/gpu.tgz.part" -C "$work" --exclude='quickstart/broker.db*' --exclude='quickstart/store' \
        --exclude='quickstart/data' --exclude='quickstart/export' . 2>/dev/null && mv "$out/gpu.tgz.part" "$out/gpu.tgz"
    cp "$work/summary.json" "$out/" 2>/dev/null || true
}
(while sleep 15; do snapshot; done) &
snapper=$!
GPU_OUT=$work SKIP_BUILD=1 CARGO_TARGET_DIR=$carry/target TORCH_BASELINE=$carry/torch_unimo_step.py \
    GPU_STEPS=${GPU_STEPS:-60} GPU_RUN_STEPS=${GPU_RUN_STEPS:-200} GPU_STAGE_SECONDS=${GPU_STAGE_SECONDS:-150} \
    GPU_RUN_SECONDS=${GPU_RUN_SECONDS:-200} bash bench/gpu.sh 2>&1 | tee "$out/gpu.log"
rc=${PIPESTATUS[0]}
kill "$snapper" 2>/dev/null
snapshot
echo "bench/gpu.sh exit $rc"
exit "$rc"
