#!/usr/bin/env bash
# scripts/test.sh: the test suite: unit tests, the real-broker Kafka tests (tansu), the
# end-to-end tests and the ops checks. Installs nothing; prerequisites come from
# scripts/install-deps.sh.
#
#   scripts/test.sh [extra cargo test arguments]
#
# Environment: TANSU_BIN (the broker binary, default: tansu on the PATH), CARGO_TARGET_DIR.

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
echo "test.sh: all tests passed in $((SECONDS - start)) s"
