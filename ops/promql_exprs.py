#!/usr/bin/env python3
"""List every PromQL expression of the unimod dashboard and rule files (stdlib only).

Used by ops/check.sh (offline parse check through `promtool check rules`) and by
ops/test-live-prometheus.sh (evaluation against a live Prometheus). Grafana variables are
replaced by values Prometheus accepts: $__rate_interval, $__interval -> RATE_INTERVAL (default
1m), $__range -> 1h, $instance -> ".+" (the dashboard's "All" value). An unknown variable is an
error, so that a new dashboard variable cannot slip past the checks unevaluated.

Usage:
  promql_exprs.py [--rate-interval 1m] [--format jsonl|rules] DASHBOARD.json [RULES.yml ...]

  --format jsonl  one JSON object per line: {"source", "kind", "title", "expr"}; kind is
                  "panel" (a dashboard query, which must return data on a live daemon),
                  "variable" (a template variable query) or "rule" (an alerting or recording
                  rule expression, which only has to parse).
  --format rules  a Prometheus rule file with one recording rule per dashboard expression, for
                  `promtool check rules` (parses and type-checks the PromQL offline).

Exits 1 with a message when the dashboard is malformed: not JSON, no "datasource" template
variable of type prometheus, a panel or target without the datasource variable, a target
without an expression, or an unknown variable.
"""

import argparse
import json
import re
import sys

VAR = re.compile(r"\$(\{)?(\w+)(?(1)\})")


class DashboardError(Exception):
    """The dashboard violates one of the rules listed in the module docstring."""


def substitute(expr, rate_interval, where):
    """Replaces Grafana variables in a PromQL expression; fails on unknown ones."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": "1h",
        "instance": ".+",
    }

    def repl(m):
        name = m.group(2)
        if name not in values:
            raise DashboardError(f"{where}: unknown variable ${name} in {expr!r}")
        return values[name]

    return VAR.sub(repl, expr)


def uses_datasource_variable(ds):
    """Whether a panel/target datasource refers to the ${datasource} variable."""
    if isinstance(ds, str):
        return ds in ("$datasource", "${datasource}")
    if isinstance(ds, dict):
        return ds.get("uid") in ("$datasource", "${datasource}")
    return False


def iter_panels(panels):
    for p in panels:
        yield p
        # Collapsed rows keep their panels inside.
        yield from iter_panels(p.get("panels", []))


def dashboard_exprs(path, rate_interval):
    """Yields (kind, title, expr) for every query of the dashboard, after checking its shape."""
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        raise DashboardError(f"{path}: not valid JSON: {e}")
    variables = dash.get("templating", {}).get("list", [])
    ds_vars = [v for v in variables if v.get("name") == "datasource"]
    if not ds_vars or ds_vars[0].get("type") != "datasource" or ds_vars[0].get("query") != "prometheus":
        raise DashboardError(f"{path}: needs a template variable 'datasource' of type datasource, query prometheus")
    for v in variables:
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if not uses_datasource_variable(v.get("datasource")):
                raise DashboardError(f"{path}: variable {v.get('name')} does not use ${{datasource}}")
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q or "")
            if m:
                # label_values(metric, label): the series selector must return data.
                yield "variable", f"variable {v.get('name')}", substitute(m.group(1), rate_interval, path)
    count = 0
    for p in iter_panels(dash.get("panels", [])):
        if p.get("type") == "row":
            continue
        title = p.get("title", f"panel {p.get('id')}")
        if not uses_datasource_variable(p.get("datasource")):
            raise DashboardError(f"{path}: panel {title!r} does not use the ${{datasource}} variable")
        targets = p.get("targets", [])
        if not targets:
            raise DashboardError(f"{path}: panel {title!r} has no queries")
        for t in targets:
            expr = t.get("expr", "").strip()
            if not expr:
                raise DashboardError(f"{path}: panel {title!r} has a query without an expression")
            if "datasource" in t and not uses_datasource_variable(t["datasource"]):
                raise DashboardError(f"{path}: a query of panel {title!r} does not use ${{datasource}}")
            count += 1
            yield "panel", f"{title} [{t.get('refId', '?')}]", substitute(expr, rate_interval, f"{path}: {title}")
    if count == 0:
        raise DashboardError(f"{path}: no panel queries")


def rule_exprs(path):
    """Yields (kind, title, expr) for every rule of a Prometheus rule file.

    The file is YAML, but Prometheus rule files written like ours (an `expr:` key followed by a
    one-line value or a `|` / `>` block) can be read without a YAML library, which keeps this
    script stdlib-only. Anything else is reported as an error rather than misread.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-\s*(alert|record):\s*(\S+)\s*$", line)
        if m:
            name = f"{m.group(1)} {m.group(2)}"
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if m:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in ("|", "|-", ">", ">-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i].strip())
                    i += 1
                yield "rule", f"{path}: {name}", " ".join(b for b in body if b)
                continue
            if rest.startswith(("'", '"')):
                raise DashboardError(f"{path}: {name}: quoted expr not supported by this reader")
            yield "rule", f"{path}: {name}", rest
        i += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate-interval", default="1m")
    ap.add_argument("--format", choices=["jsonl", "rules"], default="jsonl")
    ap.add_argument("dashboard")
    ap.add_argument("rules", nargs="*")
    args = ap.parse_args()
    try:
        items = [(args.dashboard, *x) for x in dashboard_exprs(args.dashboard, args.rate_interval)]
        for r in args.rules:
            items += [(r, *x) for x in rule_exprs(r)]
    except DashboardError as e:
        print(f"promql_exprs: {e}", file=sys.stderr)
        return 1
    if args.format == "jsonl":
        for source, kind, title, expr in items:
            print(json.dumps({"source": source, "kind": kind, "title": title, "expr": expr}))
    else:
        print("groups:\n  - name: dashboard-expressions\n    rules:")
        for n, (source, kind, title, expr) in enumerate(items):
            print(f"      # {kind}: {title}")
            print(f"      - record: check:expr_{n}")
            print(f"        expr: {json.dumps(expr)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
