#!/usr/bin/env bash
# bench/consume.sh: end-to-end consume benchmark. Starts a tansu broker (like the tests),
# publishes UNIMOD_BENCH_RECORDS text records (default 20000) to a 2-partition topic, then
# alternates, UNIMOD_BENCH_ROUNDS times (default 3), a raw rdkafka StreamConsumer (payload
# copy only) with unimod's KafkaConsumer + preprocessing pipeline (JSON decode, text
# normalisation, tokenisation) and unimod's consumer alone, reporting records/s for each and
# the ratio (goal: consume + preprocess >= 0.8x the raw consumer).
#
# Needs tansu on the PATH or TANSU_BIN (scripts/install-deps.sh). Release build.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release --locked -p unimod-e2e --bin unimod-consume-bench -- "$@"
