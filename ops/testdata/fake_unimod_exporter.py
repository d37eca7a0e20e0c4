#!/usr/bin/env python3
"""A stand-in for a training unimod daemon's HTTP port, for testing the ops checks.

Serves every metric of INTERFACE.md section 5 with plausible, moving values (counters grow with
time, a checkpoint "happens" every 20 seconds), plus /healthz and /readyz. It exists so that
ops/test-live-prometheus.sh can prove itself (`--self-test`) without building the daemon; the
real check runs against `unimod run`.

Usage: fake_unimod_exporter.py [--port 0] [--omit METRIC ...]
Prints "listening on HOST:PORT" on stdout once it accepts connections. --omit leaves metrics
out, to prove that the live test notices panels without data.
"""

import argparse
import http.server
import math
import sys
import time

START = time.time()

KINDS = ["text", "image", "pair"]
OBJECTIVES = ["total", "mlm", "seq2seq", "mrm", "cmcl", "itm"]
REASONS = {"text": ["not_json", "empty_text"], "image": ["image_decode", "fetch"], "pair": ["missing_field"]}
PARTITIONS = [("unimo.text", 0), ("unimo.image", 0), ("unimo.pair", 0), ("unimo.pair", 1)]
STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
FETCH_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
CKPT_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


def histogram(lines, name, labels, buckets, count, mean):
    """Appends a histogram whose observations all equal `mean` (enough for quantiles)."""
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    sep = "," if lab else ""
    for b in buckets:
        c = count if mean <= b else 0
        lines.append(f'{name}_bucket{{{lab}{sep}le="{b}"}} {c}')
    lines.append(f'{name}_bucket{{{lab}{sep}le="+Inf"}} {count}')
    lines.append(f"{name}_sum{{{lab}}} {count * mean}")
    lines.append(f"{name}_count{{{lab}}} {count}")


def render(omit):
    t = time.time() - START
    steps = int(t * 4)
    out = []

    def metric(name, kind, help_text, samples):
        if name in omit:
            return
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(samples)

    metric("unimod_records_total", "counter", "Fresh records consumed, by kind and outcome.",
           [f'unimod_records_total{{kind="{k}",outcome="{o}"}} {int(t * (10 if o == "trained" else 1)) + i}'
            for i, k in enumerate(KINDS) for o in ("trained", "rejected")])
    metric("unimod_records_rejected_total", "counter", "Rejected records, by kind and reason.",
           [f'unimod_records_rejected_total{{kind="{k}",reason="{r}"}} {int(t / 2) + 1}'
            for k in KINDS for r in REASONS[k]])
    metric("unimod_train_steps_total", "counter", "Optimizer steps.", [f"unimod_train_steps_total {steps}"])
    metric("unimod_train_loss", "gauge", "Latest loss by objective.",
           [f'unimod_train_loss{{objective="{o}"}} {(5 - i * 0.5) * math.exp(-t / 300) + 0.5}'
            for i, o in enumerate(OBJECTIVES)])
    metric("unimod_learning_rate", "gauge", "Current learning rate.",
           [f"unimod_learning_rate {1e-4 * min(1.0, t / 60)}"])
    metric("unimod_train_samples_total", "counter", "Training samples by source.",
           [f'unimod_train_samples_total{{source="fresh"}} {steps * 30}',
            f'unimod_train_samples_total{{source="replay"}} {steps * 2}'])
    metric("unimod_train_tokens_total", "counter", "Text tokens trained.", [f"unimod_train_tokens_total {steps * 30 * 24}"])
    if "unimod_train_step_seconds" not in omit:
        out += ["# HELP unimod_train_step_seconds Step time.", "# TYPE unimod_train_step_seconds histogram"]
        histogram(out, "unimod_train_step_seconds", {}, STEP_BUCKETS, steps, 0.2)
    metric("unimod_kafka_consumer_lag", "gauge", "Consumer lag per partition.",
           [f'unimod_kafka_consumer_lag{{topic="{tp}",partition="{p}"}} {100 + 10 * i + int(t) % 7}'
            for i, (tp, p) in enumerate(PARTITIONS)])
    if "unimod_image_fetch_seconds" not in omit:
        out += ["# HELP unimod_image_fetch_seconds Image URL fetch time.", "# TYPE unimod_image_fetch_seconds histogram"]
        histogram(out, "unimod_image_fetch_seconds", {"outcome": "ok"}, FETCH_BUCKETS, int(t), 0.04)
        histogram(out, "unimod_image_fetch_seconds", {"outcome": "error"}, FETCH_BUCKETS, int(t / 10), 1.5)
    checkpoints = int(t // 20) + 1
    if "unimod_checkpoint_seconds" not in omit:
        out += ["# HELP unimod_checkpoint_seconds Checkpoint write time.", "# TYPE unimod_checkpoint_seconds histogram"]
        histogram(out, "unimod_checkpoint_seconds", {}, CKPT_BUCKETS, checkpoints, 0.8)
    metric("unimod_checkpoint_last_success_timestamp_seconds", "gauge", "Time of the last durable checkpoint.",
           [f"unimod_checkpoint_last_success_timestamp_seconds {START + (checkpoints - 1) * 20}"])
    metric("unimod_checkpoint_bytes", "gauge", "Bytes of the newest checkpoint.", ["unimod_checkpoint_bytes 12345678"])
    metric("unimod_replay_buffer_items", "gauge", "Replay buffer items by kind.",
           [f'unimod_replay_buffer_items{{kind="{k}"}} {min(1000, steps * (i + 1))}' for i, k in enumerate(KINDS)])
    metric("unimod_nonfinite_steps_total", "counter", "Steps skipped for non-finite values.",
           ["unimod_nonfinite_steps_total 0"])
    metric("unimod_build_info", "gauge", "Build information.",
           ['unimod_build_info{version="0.1.0-fake",backend="ndarray"} 1'])
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--omit", nargs="*", default=[])
    args = ap.parse_args()
    omit = set(args.omit)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                body, ctype = render(omit).encode(), "text/plain; version=0.0.4"
            elif self.path in ("/healthz", "/readyz"):
                body, ctype = b"ok\n", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    host, port = srv.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
