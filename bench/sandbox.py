"""Sandbox throughput: executions per second and the cost of isolation per execution.

Three runners execute the same jobs in one invocation, rounds interleaved so that each sees
the same machine load:
- `bare`: `subprocess.run([python, "-I", "-S", "-B", "-c", source])`, clean environment, no
  limits, no isolation (the floor: what starting an interpreter costs);
- `unsafe-subprocess`: r1lab's weaker mode (rlimits via prlimit, a temporary directory);
- `strict`: r1lab's sandbox (bubblewrap, uid switch, seccomp, rlimits, cgroups).
Two workloads: `trivial` (`print(1)`: pure overhead) and `humaneval` (each canonical solution
with its `check`, through the assert harness: a real grading job). Throughput runs `--workers`
jobs at a time; latency runs one at a time. The overhead per execution is the strict
sandbox's latency minus the bare subprocess's.

    python bench/sandbox.py                     # 2 workers, 3 rounds
    python bench/sandbox.py --smoke             # seconds-scale settings for CI
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r1lab.sandbox import Job, Limits, Sandbox, Tests
from r1lab.sandbox.harness import plan
from r1lab.sandbox.layout import Interpreter
from r1lab.tasks.humaneval import load_problems

LIMITS = Limits(timeout=10)


def workloads(humaneval_limit: int | None) -> dict[str, list[Job]]:
    problems = load_problems()[:humaneval_limit]
    graded = []
    for p in problems:
        check = f"{p['test']}\ncheck({p['entry_point']})"
        jobs, _ = plan(p["prompt"] + p["canonical_solution"], Tests(asserts=(check,)))
        graded += jobs
    return {"trivial": [Job("print(1)")], "humaneval": graded}


def succeeded(stdout: str) -> bool:
    """`print(1)` printed 1, or the harness reported the HumanEval check passed."""
    return stdout.strip() == "1" or stdout.rstrip().endswith(" 0 passed")


def bare_runner(python: str) -> Callable[[Job], None]:
    def run(job: Job) -> None:
        done = subprocess.run(
            [python, "-I", "-S", "-B", "-c", job.source],
            input=job.stdin,
            capture_output=True,
            env={},
            timeout=60,
        )
        if done.returncode != 0 or not succeeded(done.stdout.decode()):
            raise RuntimeError(done.stderr.decode()[-500:])

    return run


def sandbox_runner(sandbox: Sandbox) -> Callable[[Job], None]:
    def run(job: Job) -> None:
        result = sandbox.run([job], LIMITS)[0]
        if result.verdict != "passed" or not succeeded(result.stdout):
            raise RuntimeError(f"{result.verdict}: {result.stderr[-500:]}")

    return run


def throughput(run: Callable[[Job], None], jobs: list[Job], workers: int) -> float:
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        list(pool.map(run, jobs))
        return len(jobs) / (time.perf_counter() - start)


def latencies(run: Callable[[Job], None], jobs: list[Job]) -> list[float]:
    out = []
    for job in jobs:
        start = time.perf_counter()
        run(job)
        out.append(time.perf_counter() - start)
    return out


def measure(runners: dict, loads: dict, args: argparse.Namespace) -> list[dict]:
    """Interleaved rounds: every (workload, runner) once per round."""
    rates: dict[tuple[str, str], list[float]] = {}
    lat: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for load, jobs in loads.items():
            batch = (jobs * (args.executions // len(jobs) + 1))[: max(args.executions, len(jobs))]
            for name, run in runners.items():
                rates.setdefault((load, name), []).append(throughput(run, batch, args.workers))
                lat.setdefault((load, name), []).extend(latencies(run, batch[: args.latency]))
    return [
        {
            "workload": load,
            "runner": name,
            "exec_per_s": statistics.median(rates[(load, name)]),
            "exec_per_s_best": max(rates[(load, name)]),
            "latency_ms_median": 1000 * statistics.median(lat[(load, name)]),
            "latency_ms_min": 1000 * min(lat[(load, name)]),
        }
        for load, name in rates
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--executions", type=int, default=164, help="jobs per throughput run")
    parser.add_argument("--latency", type=int, default=40, help="sequential jobs per round")
    parser.add_argument("--humaneval-limit", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="a few executions, one round")
    parser.add_argument("--out", default="bench/results/sandbox.json")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.executions, args.latency, args.humaneval_limit = 1, 4, 2, 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unsafe mode's warning: known, it is measured
        unsafe = Sandbox("unsafe-subprocess", args.workers)
    strict = Sandbox("strict", args.workers)
    runners = {
        "bare": bare_runner(Interpreter.current().executable),
        "unsafe-subprocess": sandbox_runner(unsafe),
        "strict": sandbox_runner(strict),
    }
    results = measure(runners, workloads(args.humaneval_limit), args)
    by = {(r["workload"], r["runner"]): r for r in results}
    overhead = {
        load: {
            stat: by[(load, "strict")][key] - by[(load, "bare")][key]
            for stat, key in (("median", "latency_ms_median"), ("min", "latency_ms_min"))
        }
        for load in ("trivial", "humaneval")
    }
    machine = {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
    machine["sandbox"] = strict.describe()
    machine["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    report = {
        "settings": vars(args),
        "machine": machine,
        "results": results,
        "overhead_strict_vs_bare_ms": overhead,
    }
    for r in results:
        print(
            f"{r['workload']:>9} {r['runner']:>17}: {r['exec_per_s']:6.1f} exec/s "
            f"(best {r['exec_per_s_best']:6.1f}), latency median {r['latency_ms_median']:6.1f} ms,"
            f" min {r['latency_ms_min']:6.1f} ms"
        )
    for load, o in overhead.items():
        print(f"strict - bare, {load}: {o['median']:.1f} ms median, {o['min']:.1f} ms min")
    strict.close()
    unsafe.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
