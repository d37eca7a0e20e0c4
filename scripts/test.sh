#!/usr/bin/env bash
# scripts/test.sh: the test suite: unit tests, the real-broker Kafka tests (tansu), the
# end-to-end tests and the ops checks. Installs nothing; prerequisites come from
# scripts/install-deps.sh.
#
#   scripts/test.sh [extra cargo test arguments]
#
# Environment: TANSU_BIN (the broker binary, default: tansu on the PATH), CARGO_TARGET_DIR,
# UNIMOD_TEST_WGPU=1 (also build and run the wgpu tests on Mesa's llvmpipe; off by default:
# they have not been built on this project's 2-core machines yet, see issue 8's note).

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
echo "test.sh: cargo test --workspace --locked --no-fail-fast $*"
cargo test --workspace --locked --no-fail-fast "$@"

# The PyTorch twin (python/unimod_torch) against the daemon: exports, embeddings, recall,
# warm starts. Fails (exit 2) when Python lacks torch: scripts/install-deps.sh installs it.
echo "test.sh: scripts/test-twin.sh"
scripts/test-twin.sh

if [[ -x ops/check.sh ]]; then
    echo "test.sh: ops/check.sh"
    ops/check.sh
fi

# The dashboard's and the rules' PromQL against a real Prometheus scraping a real
# `unimod run` (needs the binaries that `cargo test` built, and prometheus on the PATH).
if command -v prometheus >/dev/null 2>&1; then
    echo "test.sh: cargo build -p unimod -p unimod-e2e --bins"
    cargo build --locked -p unimod -p unimod-e2e --bins
    echo "test.sh: ops/test-live-prometheus.sh --daemon"
    ops/test-live-prometheus.sh --daemon
else
    echo "test.sh: prometheus not installed; skipping the live-Prometheus test" >&2
fi
# The GPU code path on any machine (issue 8): the wgpu backend (CubeCL, fusion, autotune) on
# Mesa's software Vulkan driver (llvmpipe) when there is no GPU. Builds only what it needs:
# the model's wgpu test and the daemon binary with the `wgpu` feature (copied aside, so the
# plain binary stays what the other tests use).
if [[ ${UNIMOD_TEST_WGPU:-0} != 0 ]]; then
    wgpu_start=$SECONDS
    if ! ls /usr/lib/libvulkan.so.1 /usr/lib/*/libvulkan.so.1 /usr/lib64/libvulkan.so.1 2>/dev/null | grep -q .; then
        printf 'test.sh: libvulkan.so.1 missing: run scripts/install-deps.sh (mesa-vulkan-drivers libvulkan1), or UNIMOD_TEST_WGPU=0\n' >&2
        exit 2
    fi
    # The Vulkan loader and Mesa want a runtime directory.
    if [[ -z ${XDG_RUNTIME_DIR:-} || ! -d ${XDG_RUNTIME_DIR:-} ]]; then
        XDG_RUNTIME_DIR=$(mktemp -d)
        export XDG_RUNTIME_DIR
    fi
    echo "test.sh: cargo test -p unimod-model --features wgpu --test wgpu"
    cargo test --locked -p unimod-model --features wgpu --test wgpu
    echo "test.sh: cargo build -p unimod --features wgpu --bin unimod"
    cargo build --locked -p unimod --features wgpu --bin unimod
    target_dir=${CARGO_TARGET_DIR:-target}
    cp "$target_dir/debug/unimod" "$target_dir/debug/unimod-wgpu"
    echo "test.sh: e2e: unimod run on wgpu, 30 steps"
    UNIMOD_BIN="$PWD/$target_dir/debug/unimod-wgpu"
    [[ $target_dir == /* ]] && UNIMOD_BIN="$target_dir/debug/unimod-wgpu"
    UNIMOD_BIN=$UNIMOD_BIN cargo test --locked -p unimod-e2e --test daemon -- --ignored --exact \
        gpu::wgpu_daemon_trains_30_steps_with_a_falling_loss --nocapture
    # Put the plain binary back for whoever runs target/debug/unimod next.
    cargo build --locked -p unimod --bin unimod
    echo "test.sh: wgpu tests passed in $((SECONDS - wgpu_start)) s"
fi
echo "test.sh: all tests passed in $((SECONDS - start)) s"
