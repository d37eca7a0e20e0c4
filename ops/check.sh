#!/usr/bin/env bash
# ops/check.sh: static checks of everything under ops/, for CI and before a release.
#
#   1. systemd: `systemd-analyze verify` of unimod.service alone and with the GPU drop-in (any
#      warning fails), `systemd-analyze security --offline` exposure at most 2.0, sysusers and
#      tmpfiles files applied to a scratch root. Skipped with a notice when systemd-analyze is
#      not installed.
#   2. Prometheus: `promtool check rules`, `promtool test rules`, `promtool check config` of the
#      example prometheus.yml.
#   3. Grafana: the dashboard is valid JSON, has a prometheus `datasource` variable that every
#      panel uses, and every PromQL expression parses (`promtool check rules` on a generated
#      rule file with one recording rule per panel query).
#   4. Scripts: `bash -n` of ops/*.sh, the Python helpers parse, shellcheck when installed.
#
# Exits 0 when everything checked passed, 1 otherwise (every failure is listed at the end).
# The live check against a running daemon is ops/test-live-prometheus.sh.
#
# Environment: UNIMOD_BIN, a unimod binary to put into the unit under verification (default:
# target/release/unimod or target/debug/unimod when built, else /bin/true: verify only needs
# the ExecStart= paths to exist and be executable).

set -uo pipefail

ops=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$ops")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failures=()
pass() { printf '  ok    %s\n' "$1"; }
fail() { printf '  FAIL  %s\n' "$1"; failures+=("$1"); }
skip() { printf '  skip  %s\n' "$1"; }

# Runs a command; passes when it exits 0 and, with --quiet-required, prints nothing.
check() {
    local name=$1 quiet=0
    shift
    if [[ $1 == --quiet-required ]]; then quiet=1; shift; fi
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if ((rc == 0)) && { ((quiet == 0)) || [[ -z $out ]]; }; then
        pass "$name"
    else
        fail "$name"
        [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/        /'
    fi
}

echo "systemd"
if command -v systemd-analyze >/dev/null; then
    bin=${UNIMOD_BIN:-}
    if [[ -z $bin ]]; then
        for c in "$root/target/release/unimod" "$root/target/debug/unimod" /bin/true; do
            if [[ -x $c ]]; then bin=$c; break; fi
        done
    fi
    unitdir=$scratch/units
    mkdir -p "$unitdir"
    sed "s|/usr/bin/unimod|$bin|g" "$ops/systemd/unimod.service" >"$unitdir/unimod.service"
    check "systemd-analyze verify unimod.service (ExecStart -> $bin)" --quiet-required \
        env SYSTEMD_UNIT_PATH="$unitdir:" systemd-analyze verify "$unitdir/unimod.service"
    check "systemd-analyze security: exposure <= 2.0" \
        systemd-analyze security --offline=yes --threshold=20 --no-pager "$unitdir/unimod.service"
    mkdir -p "$unitdir/unimod.service.d"
    cp "$ops/systemd/unimod-gpu.conf" "$unitdir/unimod.service.d/gpu.conf"
    check "systemd-analyze verify unimod.service + unimod-gpu.conf" --quiet-required \
        env SYSTEMD_UNIT_PATH="$unitdir:" systemd-analyze verify "$unitdir/unimod.service"
    sysroot=$scratch/root
    mkdir -p "$sysroot/etc"
    check "systemd-sysusers unimod.sysusers (scratch root)" \
        systemd-sysusers --root="$sysroot" "$ops/systemd/unimod.sysusers"
    check "systemd-tmpfiles unimod.tmpfiles (scratch root)" --quiet-required \
        systemd-tmpfiles --root="$sysroot" --create "$ops/systemd/unimod.tmpfiles"
    if [[ -d $sysroot/var/lib/unimod ]] && [[ $(stat -c %a "$sysroot/var/lib/unimod") == 750 ]]; then
        pass "tmpfiles created /var/lib/unimod 0750"
    else
        fail "tmpfiles created /var/lib/unimod 0750"
    fi
else
    skip "systemd-analyze not installed: unit not verified"
fi

echo "prometheus"
if command -v promtool >/dev/null; then
    check "promtool check rules unimod.rules.yml" promtool check rules "$ops/prometheus/unimod.rules.yml"
    check "promtool test rules unimod.rules.test.yml" promtool test rules "$ops/prometheus/unimod.rules.test.yml"
    check "promtool check config prometheus.yml" promtool check config "$ops/prometheus/prometheus.yml"
else
    fail "promtool not installed (Debian: apt-get install prometheus)"
fi

echo "grafana"
dash=$ops/grafana/unimod.json
check "dashboard is valid JSON" python3 -m json.tool "$dash"
if python3 "$ops/promql_exprs.py" --format rules "$dash" >"$scratch/dashboard.rules.yml" 2>"$scratch/err"; then
    pass "dashboard has a prometheus datasource variable used by every panel and query"
    n=$(grep -c 'record:' "$scratch/dashboard.rules.yml")
    if command -v promtool >/dev/null; then
        check "all $n dashboard PromQL expressions parse (promtool)" promtool check rules "$scratch/dashboard.rules.yml"
    fi
else
    fail "dashboard structure: $(cat "$scratch/err")"
fi

echo "scripts"
for f in "$ops"/*.sh; do
    check "bash -n ${f#"$root"/}" bash -n "$f"
done
for f in "$ops"/*.py "$ops"/testdata/*.py; do
    check "python3 compiles ${f#"$root"/}" python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' "$f"
done
if command -v shellcheck >/dev/null; then
    check "shellcheck ops/*.sh" shellcheck -S warning "$ops"/*.sh
fi

if ((${#failures[@]})); then
    echo
    echo "ops/check.sh: ${#failures[@]} check(s) failed:"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo
echo "ops/check.sh: all checks passed"
