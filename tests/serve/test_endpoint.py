"""Models behind an endpoint (`openai:MODEL@URL`, rollout/endpoint.py), tested against a real
`r1lab serve`: evaluation, rejection sampling with an endpoint judge, and distillation from an
endpoint teacher; the response cache that lets an interrupted run resume without asking
again; retries with backoff; refusals that stop at once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from servers import KEY, MODEL

from r1lab.core.errors import UserError
from r1lab.core.models import load_model
from r1lab.distill import build_distill_config, distill
from r1lab.eval.protocol import Runtime
from r1lab.eval.run import run_eval
from r1lab.eval.store import RESPONSES, RESULTS, SUMMARY, make_settings
from r1lab.rollout import SamplingParams
from r1lab.rollout.endpoint import EndpointEngine
from r1lab.sample.config import build_sample_config
from r1lab.sample.judge import Judge, Verdict
from r1lab.sample.run import JUDGE_RESPONSES, sample
from r1lab.text.templates import Prompt

TASK = {"digits": 1, "train_size": 16, "test_size": 4}


@pytest.fixture
def spec(live, monkeypatch):
    monkeypatch.setenv("R1LAB_API_KEY", KEY)
    return f"openai:{MODEL}@{live.url}"


def completions(out) -> list[str]:
    return [json.loads(line)["completion"] for line in (out / RESULTS).read_text().splitlines()]


def evaluate(model: str, out, **changes):
    settings, _ = make_settings(model, "arith", task_options=TASK, max_new_tokens=6, **changes)
    return run_eval(settings, out, limit=3, runtime=Runtime(batch_size=1, concurrency=1))


def test_greedy_evaluation_through_the_endpoint_matches_the_local_model(spec, tmp_path):
    evaluate(MODEL, tmp_path / "local", greedy=True, stop=("?",))
    summary = evaluate(spec, tmp_path / "remote", greedy=True, stop=("?",))
    assert completions(tmp_path / "remote") == completions(tmp_path / "local")
    assert summary["metrics"]["length"] > 0  # the server's token counts


def test_a_resumed_endpoint_evaluation_asks_nothing_again(spec, live, tmp_path):
    out = tmp_path / "eval"
    first = evaluate(spec, out, k=2, template="chat_think")
    asked = live.health()["engine_rows"]
    assert len((out / RESPONSES).read_text().splitlines()) == 6  # 3 problems x 2 samples
    (out / RESULTS).unlink()  # as if interrupted before any result was written
    (out / SUMMARY).unlink()
    again = evaluate(spec, out, k=2, template="chat_think")
    assert live.health()["engine_rows"] == asked
    assert again["metrics"] == first["metrics"]


def test_sampling_with_an_endpoint_model_and_an_endpoint_judge(spec, tmp_path):
    config = build_sample_config(
        {},
        [
            "name=s",
            f"out_dir={tmp_path}",
            f"model.spec={spec}",
            f"task.options={json.dumps(TASK)}",
            "prompts.limit=2",
            "generation.n=2",
            "generation.max_new_tokens=6",
            f"judge.spec={spec}",
            "judge.always=true",
            "judge.max_new_tokens=4",
            "filters.format=false",
            "filters.require_summary=false",
            "filters.language=null",
        ],
    )
    out = sample(config, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert (report["samples"], report["judged"]) == (4, 4)
    assert len((out / RESPONSES).read_text().splitlines()) == 4
    # a random model's samples hold no answer to judge: an empty prediction is wrong unasked
    assert not (out / JUDGE_RESPONSES).exists()


def test_an_endpoint_judge_is_asked_and_its_replies_cached(spec, live, tmp_path):
    cache = tmp_path / JUDGE_RESPONSES
    items = [("What is 2 + 2?", "4", "It is 4."), ("Capital of France?", "Paris", "")]
    found = Judge(spec, max_new_tokens=4, cache=cache).verdicts(items)
    assert found[1] == Verdict(False, "")  # an empty prediction is wrong, and not asked
    assert len(cache.read_text().splitlines()) == 1
    asked = live.health()["engine_rows"]
    again = Judge(spec, max_new_tokens=4, cache=cache).verdicts(items)
    assert again == found and live.health()["engine_rows"] == asked


def test_distillation_from_an_endpoint_teacher(spec, tmp_path):
    raw = {
        "kind": "distill",
        "name": "d",
        "out_dir": str(tmp_path),
        "teacher": {
            "model": {"spec": spec},
            "task": {"name": "arith", "options": TASK},
            "prompts": {"limit": 3},
            "generation": {"n": 2, "max_new_tokens": 8},
            "filters": {
                "correct": False,
                "format": False,
                "require_summary": False,
                "language": None,
            },
        },
        "student": {
            "model": {"spec": "tiny:qwen2"},
            "optim": {"lr": 0.001},
            "train": {"steps": 2, "batch_size": 4},
            "eval": {"every": 0, "size": 2},
        },
    }
    out = distill(build_distill_config(raw), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["rows"] > 0
    assert (out / "student" / "final" / "config.json").exists()
    assert (out / "teacher_data" / RESPONSES).exists()


class Flaky(BaseHTTPRequestHandler):
    """Answers `/v1/chat/completions` from a script of statuses; 200 is a fixed reply."""

    script: list[int] = []
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Flaky.seen.append(body)
        status = Flaky.script.pop(0) if Flaky.script else 200
        reply = {
            "choices": [
                {"message": {"content": "4", "reasoning_content": "2 + 2"}, "finish_reason": "stop"}
            ],
            "usage": {"completion_tokens": 3},
        }
        if status != 200:
            reply = {"error": {"message": f"status {status} on purpose", "type": "x"}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Flaky.seen, Flaky.script = [], []
    yield f"openai:m@http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    thread.join(timeout=10)


ASK = [Prompt("2 + 2?", messages=(("user", "2 + 2?"),))]


def test_passing_failures_are_retried_with_backoff(flaky):
    Flaky.script = [503, 429]
    engine = EndpointEngine(flaky, backoff_s=0.01)
    gen = engine.generate(ASK, SamplingParams(max_new_tokens=4))[0][0]
    assert gen.text == "<think>\n2 + 2\n</think>\n4" and gen.finished and gen.length == 3
    assert len(Flaky.seen) == 3


def test_a_refusal_stops_at_once_and_endless_failures_stop_after_the_retries(flaky):
    Flaky.script = [401]
    with pytest.raises(UserError, match="refused the request: HTTP 401: status 401 on purpose"):
        EndpointEngine(flaky, backoff_s=0.01).generate(ASK, SamplingParams())
    assert len(Flaky.seen) == 1
    Flaky.script = [500] * 10
    with pytest.raises(UserError, match="no answer after 3 tries"):
        EndpointEngine(flaky, retries=2, backoff_s=0.01).generate(ASK, SamplingParams())


def test_each_sample_is_its_own_seeded_request_and_the_cache_answers_repeats(flaky, tmp_path):
    cache = tmp_path / "responses.jsonl"
    params = SamplingParams(n=2, max_new_tokens=4, seeds=(10,))
    EndpointEngine(flaky, cache).generate(ASK, params)
    assert sorted(body["seed"] for body in Flaky.seen) == [10, 11]
    engine = EndpointEngine(flaky, cache)
    assert [g.text for g in engine.generate(ASK, params)[0]] == ["<think>\n2 + 2\n</think>\n4"] * 2
    assert len(Flaky.seen) == 2 and engine.asked == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("openai:model-without-url", "must read openai:MODEL@BASE_URL"),
        ("openai:m@ftp://x", "must read openai:MODEL@BASE_URL"),
    ],
)
def test_a_malformed_endpoint_spec_says_its_form(spec, message):
    with pytest.raises(UserError, match=message):
        EndpointEngine(spec)


def test_an_endpoint_model_cannot_be_loaded_or_trained(flaky):
    with pytest.raises(UserError, match="has no weights here"):
        load_model(flaky)
    with pytest.raises(UserError, match="cannot be trained"):
        EndpointEngine(flaky).sync_weights(None)
