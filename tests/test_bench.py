"""The benchmark scripts run end to end at their seconds-scale smoke settings and write their
JSON reports (what they measure is printed, never asserted: no timing bounds in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        check=True,
        capture_output=True,
        timeout=600,
    )


def test_rollout_bench_reports_both_engines_and_their_ratio(tmp_path):
    out = tmp_path / "rollout.json"
    run("rollout.py", "--out", str(out), "--dtypes", "float32")
    report = json.loads(out.read_text())
    assert {r["engine"] for r in report["results"]} == {"hf", "prefix"}
    assert all(r["valid_tokens"] > 0 for r in report["results"])
    assert report["ratios_vs_generate"]["float32"]["prefix"] > 0


def test_grpo_step_bench_reports_both_sides_ratios_and_a_breakdown_plot(tmp_path):
    pytest.importorskip("trl")
    out, plot = tmp_path / "step.json", tmp_path / "breakdown.png"
    run("grpo_step.py", "--out", str(out), "--dtypes", "float32", "--plot", str(plot),
        "--variant", "micro=4", "--variant", "micro=2,ckpt,offload,release")
    report = json.loads(out.read_text())
    assert [r["side"] for r in report["results"]] == ["trl", "r1lab", "r1lab"]
    for r in report["results"]:
        assert r["seconds_per_step"] > 0 and r["peak_rss_mb"] > 0 and r["breakdown"]["generate"] > 0
        assert r["tokens_per_step"] > 0
    assert set(report["ratios"]) == {
        "r1lab (micro 4) float32 vs TRL float32",
        "r1lab (micro 2, ckpt, ref offload, release) float32 vs TRL float32",
    }
    assert all(ratio["time_per_token"] > 0 for ratio in report["ratios"].values())
    assert plot.stat().st_size > 0


def test_grpo_step_bench_takes_the_prompt_shape_and_reports_each_steps_compute_floor(tmp_path):
    reports = {}
    for shots in (0, 2):
        out = tmp_path / f"shots{shots}.json"
        run("grpo_step.py", "--out", str(out), "--dtypes", "float32", "--sides", "r1lab",
            "--shots", str(shots))
        reports[shots] = json.loads(out.read_text())
    (zero,), (two,) = reports[0]["results"], reports[2]["results"]
    assert reports[0]["settings"]["shots"] == 0 and reports[2]["settings"]["shots"] == 2
    assert 0 < zero["prompt_tokens"] < two["prompt_tokens"]  # the worked examples are gone
    for r in (zero, two):
        assert r["matmul_gflops"] > 0 and r["floor_seconds"] > 0
        assert r["floor_multiple"] == pytest.approx(r["seconds_per_step"] / r["floor_seconds"])


def test_serve_bench_reports_both_phases_and_the_server_survives_bad_requests(tmp_path):
    out = tmp_path / "serve.json"
    run("serve.py", "--out", str(out))
    report = json.loads(out.read_text())
    for phase in ("baseline", "load"):
        assert report[phase]["requests"] > 0 and report[phase]["failed"] == 0
        assert report[phase]["ttft_ms_p50"] > 0
        assert report[phase]["per_token_ms_p50"] >= 0  # tiny model: pieces may share a read
    assert report["load"]["clients"] == 2 and report["throughput_ratio"] > 0
    checks = report["robustness"]
    assert (checks["malformed_status"], checks["oversized_status"]) == (400, 413)
    assert checks["still_answering"] and checks["in_flight_after_abandoned"] == 0


def test_distributed_bench_reports_both_rows_with_their_ratios(tmp_path):
    out = tmp_path / "distributed.json"
    run("distributed.py", "--out", str(out))
    report = json.loads(out.read_text())
    ddp, lora = report["ddp"], report["lora"]
    assert [s["ranks"] for s in ddp["sides"]] == [1, 2]
    assert ddp["same_samples"]  # same global batch and seed: the same samples on both sides
    assert ddp["throughput_ratio"] > 0 and lora["rss_ratio"] > 0 and lora["time_ratio"] > 0
    assert all(s["peak_rss_mb"] > 0 and s["tokens_per_step"] > 0 for s in lora["sides"])


def test_sandbox_bench_reports_every_runner_and_the_overhead(tmp_path):
    out = tmp_path / "sandbox.json"
    run("sandbox.py", "--out", str(out))
    report = json.loads(out.read_text())
    runners = {(r["workload"], r["runner"]) for r in report["results"]}
    assert runners == {
        (load, runner)
        for load in ("trivial", "humaneval")
        for runner in ("bare", "unsafe-subprocess", "strict")
    }
    assert all(r["exec_per_s"] > 0 and r["latency_ms_min"] > 0 for r in report["results"])
    assert set(report["overhead_strict_vs_bare_ms"]) == {"trivial", "humaneval"}
    assert "strict: bubblewrap" in report["machine"]["sandbox"]


def test_attention_bench_times_each_implementation_on_both_weight_dtypes(tmp_path):
    out = tmp_path / "attention.json"
    run("attention.py", "--out", str(out), "--repeats", "1")
    report = json.loads(out.read_text())
    rows = {(r["weights"], r["attention"]) for r in report["results"]}
    assert rows == {(w, a) for w in ("float32", "bfloat16") for a in ("sdpa", "block", "eager")}
    assert all(r["seconds"] > 0 and r["saved_mb"] > 0 for r in report["results"])
