#!/usr/bin/env python3
"""Daemon benchmarks for BENCHMARKS.md: start-up time to READY=1, idle resident memory, and the
`aiop bench api` load test (concurrent clients sending POST /v1/predict over loopback).

Every run starts a fresh `aiop serve` on a fresh state directory (port 0, loopback) from the
release binary; figures are medians over --runs runs. Needs only the Python standard library.

    cargo build --release
    python3 tests/bench/bench_daemon.py --runs 5 --clients 16 --requests 10000
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def start(binary, state, notify_path=None):
    env = dict(os.environ, RUST_LOG="warn", AIOP_LOG_FORMAT="json")
    if notify_path:
        env["NOTIFY_SOCKET"] = notify_path
    return subprocess.Popen(
        [binary, "serve", "--state", state, "--listen", "127.0.0.1:0"],
        cwd=os.path.dirname(state),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(state + ".log", "ab"),
    )


def wait_addr(state, timeout=30.0):
    end = time.monotonic() + timeout
    path = os.path.join(state, "aiop.addr")
    while time.monotonic() < end:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return text.strip()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise SystemExit("the daemon did not write its address file")


def stop(proc):
    proc.terminate()
    code = proc.wait(timeout=30)
    if code != 0:
        raise SystemExit(f"the daemon exited with {code} after SIGTERM")


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def boot(binary, state, sock_path, idle_secs):
    """Spawn → READY=1 (ms); with `idle_secs`, VmRSS and threads after idling that long."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    sock.bind(sock_path)
    sock.settimeout(30)
    t0 = time.monotonic()
    proc = start(binary, state, sock_path)
    try:
        while True:
            msg = sock.recv(256)
            if msg.startswith(b"READY=1"):
                break
        out = {"ready_ms": (time.monotonic() - t0) * 1e3}
        if idle_secs:
            time.sleep(idle_secs)
            st = proc_status(proc.pid)
            out["idle_rss_mb"] = int(st["VmRSS"].split()[0]) / 1024
            out["threads"] = int(st["Threads"])
    finally:
        stop(proc)
        sock.close()
    return out


def startup_and_rss(binary, idle_secs):
    """A first start on a fresh state directory (the store is created), then a restart on it."""
    with tempfile.TemporaryDirectory() as root:
        state = os.path.join(root, "state")
        sock_path = os.path.join(root, "notify.sock")
        fresh = boot(binary, state, sock_path, idle_secs)
        again = boot(binary, state, sock_path, 0)
    fresh["restart_ready_ms"] = again["ready_ms"]
    return fresh


def metrics(addr):
    import urllib.request

    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        out[k] = float(v)
    return out


def load_test(binary, clients, requests, extra):
    with tempfile.TemporaryDirectory() as root:
        state = os.path.join(root, "state")
        proc = start(binary, state)
        try:
            addr = wait_addr(state)
            out = subprocess.run(
                [binary, "bench", "api", "--addr", addr, "--clients", str(clients),
                 "--requests", str(requests)] + extra,
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"aiop bench api failed: {out.stderr}{out.stdout}")
            r = json.loads(out.stdout)
            m = metrics(addr)
            hits = m.get("aiop_prediction_cache_hits_total", 0)
            misses = m.get("aiop_prediction_cache_misses_total", 0)
            r["cache_hit_ratio"] = hits / max(hits + misses, 1)
            n = m.get("aiop_prediction_batch_graphs_count", 0)
            r["forward_passes"] = n
            r["mean_graphs_per_pass"] = m.get("aiop_prediction_batch_graphs_sum", 0) / max(n, 1)
            r["mean_requests_per_pass"] = m.get("aiop_prediction_batch_requests_sum", 0) / max(n, 1)
            st = proc_status(proc.pid)
            r["rss_after_mb"] = int(st["VmRSS"].split()[0]) / 1024
        finally:
            stop(proc)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default="target/release/aiop")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--idle-secs", type=float, default=5.0)
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("extra", nargs="*", help="more arguments for `aiop bench api` (after --)")
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)

    boots = [startup_and_rss(binary, a.idle_secs) for _ in range(a.runs)]
    for b in boots:
        print(json.dumps({"startup": b}), flush=True)
    med = lambda xs: statistics.median(xs)
    summary = {
        "ready_ms_median": med([b["ready_ms"] for b in boots]),
        "ready_ms_range": [min(b["ready_ms"] for b in boots), max(b["ready_ms"] for b in boots)],
        "restart_ready_ms_median": med([b["restart_ready_ms"] for b in boots]),
        "restart_ready_ms_range": [min(b["restart_ready_ms"] for b in boots),
                                   max(b["restart_ready_ms"] for b in boots)],
        "idle_rss_mb_median": med([b["idle_rss_mb"] for b in boots]),
        "threads": med([b["threads"] for b in boots]),
    }
    if not a.skip_load:
        loads = [load_test(binary, a.clients, a.requests, a.extra) for _ in range(a.runs)]
        for r in loads:
            print(json.dumps({"load": r}), flush=True)
        for k in ["requests_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cache_hit_ratio",
                  "mean_graphs_per_pass", "mean_requests_per_pass", "rss_after_mb"]:
            summary[k + "_median"] = med([r[k] for r in loads])
        summary["errors_total"] = sum(r["errors"] for r in loads)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
