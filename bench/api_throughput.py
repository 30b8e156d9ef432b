"""Sustained runs/s of a trivial graph through the REST API, with p50/p99 latency (issue 4 target:
>= 200 runs/s at p99 <= 50 ms on 2 cores).

Starts `hetagent serve` on a free loopback port with a fresh data dir, deploys a one-transform
graph, then drives sync `POST /v1/graphs/{id}/runs` from N client threads for a bounded time.

Usage: python bench/api_throughput.py [--seconds 20] [--clients 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
GRAPH = """
apiVersion: hetagent.dev/v1alpha1
kind: AgentGraph
metadata: {name: trivial}
spec:
  sla: {e2e_ms: 1000}
  inputs: {text: {type: string}}
  nodes:
    - name: redact
      kind: transform
      function: workers.transforms:redact_pii
      inputs: {text: "{{ inputs.text }}"}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="hetagent-bench-"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "orchestrator.cli"]
    key = subprocess.run(
        [*cli, "keys", "create", "--scope", "write", "--data-dir", str(data)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with open(data / "daemon.log", "w") as log:  # the daemon keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*cli, "serve", "--port", str(port), "--data-dir", str(data)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        c = httpx.Client(base_url=url, headers=headers, timeout=60)
        gid = c.post("/v1/graphs", content=GRAPH, headers={"Content-Type": "application/yaml"}).json()["id"]
        c.post(f"/v1/graphs/{gid}/plans", json={"rate_per_s": 200}).raise_for_status()
        dep = c.post(f"/v1/graphs/{gid}/deployments", json={}).json()["id"]
        while c.get(f"/v1/graphs/{gid}/deployments/{dep}").json()["state"] != "ready":
            time.sleep(0.2)
        body = {"inputs": {"text": "call +1 415 555 0134 or mail a@b.com"}}
        for _ in range(50):  # warm-up
            c.post(f"/v1/graphs/{gid}/runs", json=body).raise_for_status()

        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.perf_counter() + args.seconds

        def client() -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as cc:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    r = cc.post(f"/v1/graphs/{gid}/runs", json=body)
                    dt = (time.perf_counter() - t0) * 1000.0
                    with lock:
                        if r.status_code == 200 and r.json()["status"] == "succeeded":
                            latencies.append(dt)
                        else:
                            errors.append(f"{r.status_code} {r.text[:200]}")

        if os.environ.get("BENCH_PROFILE"):
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-d",
                    str(int(args.seconds) - 2),
                    "-o",
                    os.environ["BENCH_PROFILE"],
                    "-f",
                    "raw",
                    "-p",
                    str(proc.pid),
                    "-r",
                    "50",
                    "--gil",
                ]
            )
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        lat = sorted(latencies)
        out = {
            "clients": args.clients,
            "seconds": wall,
            "runs": len(lat),
            "errors": len(errors),
            "runs_per_s": len(lat) / wall,
            "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "machine": f"{os.cpu_count()} CPUs",
        }
        print(
            f"{out['runs']} runs in {wall:.1f} s with {args.clients} clients: {out['runs_per_s']:.0f} runs/s, "
            f"p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, errors {len(errors)}"
        )
        if errors:
            print("first error:", errors[0])
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the daemon and the local Ray it started (its process group)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
