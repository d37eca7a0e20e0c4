#!/usr/bin/env bash
# scripts/install-deps.sh: installs what building and testing unimod needs, and only what is
# missing (safe to run again; a warm machine does nothing and needs no network).
#
#   - Debian packages: build-essential, cmake, pkg-config, libcurl4-openssl-dev, libssl-dev
#     (librdkafka is built from source by rdkafka's cmake-build), curl, git, ca-certificates,
#     python3, prometheus (promtool, used by ops/check.sh), systemd (systemd-analyze, used by
#     ops/check.sh; skipped where the package is not available), mesa-vulkan-drivers and
#     libvulkan1 (Mesa's software Vulkan driver, llvmpipe: the wgpu backend's tests run on it
#     without a GPU);
#   - Rust (rustup, stable toolchain) when `cargo` is missing;
#   - the PyTorch twin's Python dependencies (torch, safetensors, tokenizers: `pip install -e
#     python/`) in a virtual environment, UNIMOD_VENV (default ~/.cache/unimod/venv), used by
#     scripts/test-twin.sh. PyPI's default torch wheel brings its CUDA libraries (about 3 GB,
#     a few minutes); the CPU is all the tests use;
#   - the tansu Kafka-protocol broker (`cargo install tansu --locked --features libsql`, for
#     its sqlite storage engine) when no working `tansu` is on the PATH and TANSU_BIN is unset.
#
# Run as root, or as a user with sudo (used for apt-get only).

set -euo pipefail

say() { printf 'install-deps: %s\n' "$*"; }

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    as_root=()
fi

# Debian packages ------------------------------------------------------------------------
packages=(build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev curl git
          ca-certificates python3 python3-venv prometheus systemd mesa-vulkan-drivers libvulkan1)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
else
    say "not a Debian system (no dpkg-query): install ${packages[*]} by hand"
fi
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 && ${#as_root[@]} -eq 0 ]]; then
        say "missing packages ${missing[*]} and neither root nor sudo; install them and rerun" >&2
        exit 1
    fi
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -q
    available=()
    for p in "${missing[@]}"; do
        if apt-cache show "$p" >/dev/null 2>&1; then
            available+=("$p")
        elif [[ $p == systemd || $p == prometheus ]]; then
            say "package $p not available here; ops/check.sh skips what needs it"
        else
            say "package $p not available from apt" >&2
            exit 1
        fi
    done
    if ((${#available[@]})); then
        "${as_root[@]}" apt-get install -y -q --no-install-recommends "${available[@]}"
    fi
else
    say "Debian packages: all present"
fi

# Rust -------------------------------------------------------------------------------------
if [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    say "installing Rust (rustup, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
else
    say "Rust: $(cargo --version)"
fi

# tansu ------------------------------------------------------------------------------------
tansu_works() { "$1" --help >/dev/null 2>&1; }
if [[ -n ${TANSU_BIN:-} ]] && tansu_works "$TANSU_BIN"; then
    say "tansu: $TANSU_BIN (TANSU_BIN)"
elif command -v tansu >/dev/null 2>&1 && tansu_works "$(command -v tansu)"; then
    say "tansu: $(command -v tansu)"
else
    say "installing tansu (cargo install tansu --locked --features libsql; takes a while)"
    cargo install tansu --locked --features libsql
    tansu_works "$(command -v tansu)" || { say "tansu installed but does not run" >&2; exit 1; }
fi
# Python (the PyTorch twin) -------------------------------------------------------------------
venv=${UNIMOD_VENV:-$HOME/.cache/unimod/venv}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import torch, safetensors, tokenizers, unimod_torch' >/dev/null 2>&1; then
    say "python twin: $venv"
else
    say "python twin: pip install -e python/ into $venv (torch, safetensors, tokenizers; torch is large)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$repo/python"
    "$venv/bin/python" -c 'import torch, safetensors, tokenizers, unimod_torch' \
        || { say "the python twin's dependencies do not import" >&2; exit 1; }
fi
say "done"
