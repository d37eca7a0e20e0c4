#!/usr/bin/env bash
# scripts/test.sh: the test suite: unit tests, the real-broker Kafka tests (tansu), the
# end-to-end tests and the ops checks. Installs nothing; prerequisites come from
# scripts/install-deps.sh.
#
#   scripts/test.sh [extra cargo test arguments]
#
# Environment: TANSU_BIN (the broker binary, default: tansu on the PATH), CARGO_TARGET_DIR,
# UNIMOD_TEST_WGPU (default 1: build everything with the `wgpu` feature and run the GPU code
# path's tests on Mesa's software Vulkan driver, llvmpipe; 0: CPU only, no Vulkan needed).
#
# One feature set for every build here: the binaries, the workspace tests and the wgpu tests
# all compile with `--features unimod/wgpu`, so burn and its dependencies are compiled once
# per profile, not once per feature combination. The CPU tests are unaffected: the backend is
# chosen by `train.device` (default "cpu") at run time.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi

missing=()
for tool in cargo cmake pkg-config c++; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ -n ${TANSU_BIN:-} ]]; then
    [[ -x $TANSU_BIN ]] || missing+=("tansu (TANSU_BIN=$TANSU_BIN is not executable)")
else
    command -v tansu >/dev/null 2>&1 || missing+=("tansu")
fi
if ((${#missing[@]})); then
    printf 'test.sh: missing prerequisites: %s\n' "${missing[*]}" >&2
    printf 'test.sh: run scripts/install-deps.sh (as root or with sudo) first\n' >&2
    exit 2
fi

start=$SECONDS
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir
features=()
if [[ ${UNIMOD_TEST_WGPU:-1} != 0 ]]; then
    vulkan=
    for f in /usr/lib/libvulkan.so.1 /usr/lib/*/libvulkan.so.1 /usr/lib64/libvulkan.so.1; do
        [[ -e $f ]] && vulkan=$f
    done
    if [[ -z $vulkan ]]; then
        printf 'test.sh: libvulkan.so.1 missing: run scripts/install-deps.sh (mesa-vulkan-drivers libvulkan1), or UNIMOD_TEST_WGPU=0\n' >&2
        exit 2
    fi
    # The Vulkan loader and Mesa want a runtime directory.
    if [[ -z ${XDG_RUNTIME_DIR:-} || ! -d ${XDG_RUNTIME_DIR:-} ]]; then
        XDG_RUNTIME_DIR=$(mktemp -d)
        export XDG_RUNTIME_DIR
    fi
    features=(--features unimod/wgpu,unimod-model/wgpu)
    # These tests check that the GPU path computes the right thing, not how fast: CubeCL's
    # least autotuning effort (on llvmpipe every candidate kernel is benchmarked on the CPU,
    # minutes per new shape at the default level). An explicit setting wins.
    export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
fi

# The binaries the end-to-end tests, the twin and the live-Prometheus check run (built once,
# here, so that no test builds them again with other features).
echo "test.sh: cargo build -p unimod -p unimod-e2e --bins ${features[*]}"
cargo build --locked -p unimod -p unimod-e2e --bins "${features[@]}"
export UNIMOD_BIN=$target_dir/debug/unimod UNIMOD_SYNTH_BIN=$target_dir/debug/unimod-synth

# With the wgpu feature this includes the model's wgpu tests (model/tests/wgpu.rs: every
# objective against the CPU backend, save on one backend and load on the other, one device
# read per step) on llvmpipe.
echo "test.sh: cargo test --workspace --locked --no-fail-fast ${features[*]} $*"
cargo test --workspace --locked --no-fail-fast "${features[@]}" "$@"

# The PyTorch twin (python/unimod_torch) against the daemon: exports, embeddings, recall,
# warm starts. Fails (exit 2) when Python lacks torch: scripts/install-deps.sh installs it.
echo "test.sh: scripts/test-twin.sh"
scripts/test-twin.sh

if [[ -x ops/check.sh ]]; then
    echo "test.sh: ops/check.sh"
    ops/check.sh
fi

# The dashboard's and the rules' PromQL against a real Prometheus scraping a real
# `unimod run` (the binaries built above, and prometheus on the PATH).
if command -v prometheus >/dev/null 2>&1; then
    echo "test.sh: ops/test-live-prometheus.sh --daemon"
    ops/test-live-prometheus.sh --daemon
else
    echo "test.sh: prometheus not installed; skipping the live-Prometheus test" >&2
fi
# The GPU code path through the real daemon (issue 8): `unimod run` with train.device = "wgpu"
# (CubeCL, fusion, autotune; llvmpipe when there is no GPU) trains 30 steps with a falling loss.
if ((${#features[@]})); then
    echo "test.sh: e2e: unimod run on wgpu, 30 steps"
    cargo test --locked -p unimod-e2e --test daemon -- --ignored --exact \
        gpu::wgpu_daemon_trains_30_steps_with_a_falling_loss --nocapture
fi
echo "test.sh: all tests passed in $((SECONDS - start)) s"
