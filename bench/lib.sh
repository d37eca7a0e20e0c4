# bench/lib.sh: what the daemon benchmarks share (sourced, not run): the binaries to use, a
# scratch folder with a local tansu broker and the four topics, and a cleanup on exit that
# kills the broker and the daemon (`daemon_pid`, set by the caller) and removes the folder.
#
#   source bench/lib.sh
#   bench_start PREFIX        # sets BIN, PROFILE, work, port; creates PREFIX.{text,image,pair,dlq}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { printf '==> %s\n' "$*" >&2; }

bench_cleanup() {
    [[ -n ${daemon_pid:-} ]] && kill -9 "$daemon_pid" 2>/dev/null || true
    [[ -n ${broker_pid:-} ]] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
}

bench_start() {
    local prefix=$1 t
    # Release binaries when built ($CARGO_TARGET_DIR or target), else debug.
    local target=${CARGO_TARGET_DIR:-target}
    PROFILE=release
    [[ -x $target/release/unimod && -x $target/release/unimod-synth ]] || PROFILE=debug
    BIN=$target/$PROFILE
    work=$(mktemp -d)
    port=$(free_port)
    broker_pid=
    daemon_pid=
    trap bench_cleanup EXIT
    # tansu in the scratch folder (it mangles absolute sqlite paths).
    (cd "$work" && exec tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine sqlite://broker.db >broker.log 2>&1) &
    broker_pid=$!
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    for t in text image pair dlq; do
        tansu topic create "$prefix.$t" --broker "tcp://127.0.0.1:$port" --partitions 2 >/dev/null
    done
}
