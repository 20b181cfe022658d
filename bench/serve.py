"""Load test of `r1lab serve` on 127.0.0.1: N concurrent streaming clients for a bounded time.

Starts `r1lab serve MODEL --port 0` (a free loopback port), then, against that one server:
  1. baseline: one client sending streamed chat requests back to back for `--seconds`;
  2. load: `--clients` clients doing the same at once for `--seconds`;
  3. robustness: a malformed body, an oversized body and abandoned streams (closed after their
     first line), each answered or dropped without harm, then one normal request, which must
     still succeed.
Per phase: requests, failures, requests/s, generated tokens/s, time to first token and
per-token latency (p50/p99, from the SSE chunks as the client receives them), and the server's
engine calls and rows (how many requests each batch carried). The ratio printed is the load
phase's throughput over the baseline's, measured in the same invocation. Every loop is bounded
in time and count; the server is stopped at the end.

    python bench/serve.py --out bench/results/serve.json      # built-in model, 8 clients, 60 s
    python bench/serve.py --smoke                              # tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

KEY = "bench-key"


def start_server(model: str, max_tokens: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "r1lab",
        "serve",
        model,
        "--port",
        "0",
        "--max-tokens",
        str(max_tokens),
        "--max-body-bytes",
        "100000",
    ]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "R1LAB_API_KEY": KEY}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([process.stdout], [], [], 600)
    line = process.stdout.readline() if ready else ""
    found = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
    if not found:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    url = found.group(0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url[:-3] + "/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server never answered its health route")


def stream_once(client: httpx.Client, url: str, model: str, i: int, max_tokens: int) -> dict:
    """One streamed chat request: its time to first token and per-token gaps."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0.6,
        "messages": [{"role": "user", "content": f"What is {i % 50} + {7 * i % 30}?"}],
    }
    began = time.perf_counter()
    stamps = []
    with client.stream("POST", url + "/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            return {"ok": False, "status": reply.status_code}
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "status": "stream error"}
            delta = chunk["choices"][0].get("delta", {}) if chunk["choices"] else {}
            if delta.get("content") or delta.get("reasoning_content"):
                stamps.append(time.perf_counter())
    if not stamps:
        return {"ok": True, "ttft": None, "gaps": [], "pieces": 0}
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"ok": True, "ttft": stamps[0] - began, "gaps": gaps, "pieces": len(stamps)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def phase(
    url: str, model: str, clients: int, seconds: float, max_tokens: int, max_requests: int
) -> dict:
    """`clients` threads streaming requests until `seconds` pass (or `max_requests` each)."""
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop(c: int) -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(headers=headers, timeout=300) as client:
            for n in range(max_requests):
                if time.monotonic() >= deadline:
                    return
                try:
                    result = stream_once(client, url, model, c * 1000 + n, max_tokens)
                except (httpx.HTTPError, ValueError) as err:
                    result = {"ok": False, "status": type(err).__name__}
                with lock:
                    results.append(result)

    before = httpx.get(url[:-3] + "/health").json()
    began = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    after = httpx.get(url[:-3] + "/health").json()
    done = [r for r in results if r["ok"]]
    gaps = [g for r in done for g in r["gaps"]]
    ttfts = [r["ttft"] for r in done if r["ttft"] is not None]
    calls = after["engine_calls"] - before["engine_calls"]
    rows = after["engine_rows"] - before["engine_rows"]
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(results),
        "failed": len(results) - len(done),
        "requests_per_s": round(len(done) / wall, 3),
        "pieces_per_s": round(sum(r["pieces"] for r in done) / wall, 1),
        "ttft_ms_p50": ms(percentile(ttfts, 50)),
        "ttft_ms_p99": ms(percentile(ttfts, 99)),
        "per_token_ms_p50": ms(percentile(gaps, 50)),
        "per_token_ms_p99": ms(percentile(gaps, 99)),
        "engine_calls": calls,
        "rows_per_engine_call": round(rows / calls, 2) if calls else None,
    }


def robustness(url: str, model: str, max_tokens: int) -> dict:
    """Bad and abandoned requests, then whether a normal one still succeeds."""
    headers = {"Authorization": f"Bearer {KEY}"}
    chat = url + "/chat/completions"
    malformed = httpx.post(chat, content=b'{"model": ', headers=headers, timeout=60)
    huge = {"model": model, "messages": [{"role": "user", "content": "x" * 200_000}]}
    oversized = httpx.post(chat, json=huge, headers=headers, timeout=60)
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
    }
    for _ in range(3):
        with httpx.stream("POST", chat, json=body, headers=headers, timeout=60) as reply:
            next(reply.iter_lines())  # then the client goes away mid-stream
    deadline = time.monotonic() + 120
    while httpx.get(url[:-3] + "/health").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = httpx.post(
        chat,
        headers=headers,
        timeout=300,
        json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
    )
    return {
        "malformed_status": malformed.status_code,
        "oversized_status": oversized.status_code,
        "abandoned_streams": 3,
        "in_flight_after_abandoned": httpx.get(url[:-3] + "/health").json()["in_flight"],
        "still_answering": after.status_code == 200,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=1000, help="per client and phase")
    parser.add_argument("--threads", type=int, help="the server's torch threads")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 clients, 3 s")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.clients, args.seconds, args.max_tokens = "tiny:llama", 2, 3.0, 8
    process, url = start_server(args.model, args.max_tokens, args.threads)
    try:
        base = phase(url, args.model, 1, args.seconds, args.max_tokens, args.max_requests)
        load = phase(
            url, args.model, args.clients, args.seconds, args.max_tokens, args.max_requests
        )
        checks = robustness(url, args.model, args.max_tokens)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    report = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "baseline": base,
        "load": load,
        "robustness": checks,
        "throughput_ratio": round(load["requests_per_s"] / base["requests_per_s"], 2)
        if base["requests_per_s"]
        else None,
    }
    for name in ("baseline", "load"):
        p = report[name]
        print(
            f"{name:8s} {p['clients']} client(s): {p['requests']} requests, {p['failed']} failed,"
            f" {p['requests_per_s']} req/s, TTFT p50/p99 {p['ttft_ms_p50']}/{p['ttft_ms_p99']} ms,"
            f" per token p50/p99 {p['per_token_ms_p50']}/{p['per_token_ms_p99']} ms,"
            f" {p['rows_per_engine_call']} requests per engine call"
        )
    print(f"throughput {report['throughput_ratio']}x the single client; robustness: {checks}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
