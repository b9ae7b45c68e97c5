"""Load benchmark of ``torchcf serve``: a fixed number of /recommend requests over loopback.

Starts the real server on a free 127.0.0.1 port, waits for /health, sends ``--requests`` GET
/recommend requests for random known users from ``--clients`` concurrent keep-alive clients
(threads), prints errors, throughput and latency percentiles, and stops the server. Bounded: it
never runs longer than the requests take (plus a 60 s start-up limit) and touches no network.

    .venv/bin/python benchmarks/serve_load.py --run RUN_DIR [--requests 10000] [--clients 8]

``--ann`` runs the same requests twice, against ``torchcf serve`` and ``torchcf serve --ann``
(one server at a time), and prints the two side by side with the latency ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with status {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server did not become healthy within {limit:.0f} s")


def client(port: int, paths: list[str], latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path in paths:
        start = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or not json.loads(body)["items"]:
                errors.append(f"{response.status} {body[:100]!r}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies.append(time.perf_counter() - start)
    conn.close()


def run_clients(port: int, paths: list[str], clients: int) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    shares = [paths[i::clients] for i in range(clients)]
    threads = [
        threading.Thread(target=client, args=(port, share, latencies, errors)) for share in shares
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a trained run directory")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ann", action="store_true", help="also serve --ann; print both")
    parser.add_argument(
        "--start-limit", type=float, default=60.0, help="seconds a server may take to start"
    )
    args = parser.parse_args()

    model_dir = Path(args.run) / "model" if (Path(args.run) / "model").exists() else Path(args.run)
    users = json.loads((model_dir / "user_ids.json").read_text())
    model = json.loads((model_dir / "config.json").read_text())["model"]
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(users), size=args.requests + 200)
    paths = [f"/recommend?user={users[i]}&k={args.k}" for i in picks]

    modes = [[], ["--ann"]] if args.ann else [[]]
    results = {}
    for extra in modes:
        label = "serve --ann" if extra else "serve"
        ms, errors, wall = load(args, paths, extra)
        results[label] = ms
        print(
            f"{label:12s} requests {len(ms)}  errors {len(errors)}  wall {wall:.2f}s  "
            f"throughput {len(ms) / wall:,.0f} req/s  latency ms: "
            + "  ".join(f"p{q} {np.percentile(ms, q):.2f}" for q in (50, 90, 99))
            + f"  max {ms.max():.2f}"
        )
        if errors:
            print("first errors:", *errors[:5], sep="\n  ")
            raise SystemExit(1)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; server: torchcf serve "
        f"({model}, {len(users)} users), {args.threads} torch thread(s); clients: {args.clients} "
        f"threads, keep-alive, loopback"
    )
    if args.ann:
        exact, ann = results["serve"], results["serve --ann"]
        print(
            "exact / ann latency: "
            + "  ".join(
                f"p{q} {np.percentile(exact, q) / np.percentile(ann, q):.1f}x" for q in (50, 99)
            )
        )


def load(
    args: argparse.Namespace, paths: list[str], extra: list[str]
) -> tuple[np.ndarray, list[str], float]:
    """Start a server (``extra``: its flags), warm it, time ``paths`` from the clients."""
    port = free_port()
    command = [sys.executable, "-m", "torchcf", "serve", str(args.run), "--port", str(port)]
    command += ["--threads", str(args.threads), *extra]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ})
    try:
        wait_healthy(port, server, limit=args.start_limit)
        run_clients(port, paths[:200], args.clients)  # warm-up, not counted
        latencies, errors, wall = run_clients(port, paths[200:], args.clients)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return np.array(latencies) * 1e3, errors, wall


if __name__ == "__main__":
    main()
