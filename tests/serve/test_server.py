"""`r1lab serve` as the official `openai` client sees it, on 127.0.0.1: plain and streamed
chat, completions, the model list, the API's errors, the key, concurrent requests batched,
the reasoning apart from the answer, and a server that keeps answering after abandoned,
malformed and oversized requests."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from servers import KEY, MODEL, ScriptedEngine, running, scripted, wait_until

from r1lab import cli
from r1lab.text.formats import OutputFormat

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url, api_key=KEY, max_retries=0, timeout=60)


def test_a_chat_completion_has_the_apis_shape_and_counts(client):
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, seed=1)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content  # a random model never closes a <think>: all of it is content
    assert reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens > 0


def test_a_streamed_chat_adds_up_to_the_same_seeded_reply(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, seed=7, temperature=1.0
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=8,
        seed=7,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_completions_take_several_prompts_and_n_choices_each(client):
    reply = client.completions.create(
        model=MODEL, prompt=["2 + 2 =", "Red, green,"], n=2, max_tokens=3, seed=3
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.text and c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 12
    streamed = client.completions.create(
        model=MODEL, prompt="2 + 2 =", max_tokens=4, stream=True, seed=3
    )
    assert "".join(c.choices[0].text for c in streamed)


def test_the_model_list_names_the_served_model(client):
    assert [m.id for m in client.models.list()] == [MODEL]


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"max_tokens": 65}, openai.BadRequestError, "more than this server allows (64)"),
        ({"temperature": -1}, openai.BadRequestError, "temperature must be"),
        ({"n": 9}, openai.BadRequestError, "n must be"),
        ({"model": "gpt-5"}, openai.NotFoundError, "does not exist"),
        (
            {"messages": [{"role": "user", "content": "x " * 600}]},
            openai.BadRequestError,
            "the prompt is",
        ),
        ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "role"),
        ({"logprobs": True}, openai.BadRequestError, "not supported"),
    ],
)
def test_limits_and_mistakes_are_the_apis_4xx_errors(client, kwargs, error, fragment):
    args = {"model": MODEL, "messages": HELLO, "max_tokens": 2, **kwargs}
    with pytest.raises(error) as raised:
        client.chat.completions.create(**args)
    assert fragment in raised.value.body["message"]


def test_a_wrong_or_missing_key_is_refused_and_health_needs_none(live):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=live.url, api_key=key or "unset", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert httpx.post(live.url + "/chat/completions", json={}).status_code == 401
    assert live.health()["status"] == "ok"


def test_the_server_answers_after_malformed_oversized_and_abandoned_requests(live, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(live.url + "/chat/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("the request body")
    huge = httpx.post(
        live.url + "/chat/completions",
        headers=headers,
        json={"model": MODEL, "messages": [{"role": "user", "content": "y" * 30000}]},
    )
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 64, "stream": True}
    with httpx.stream("POST", live.url + "/chat/completions", json=body, headers=headers) as r:
        next(r.iter_lines())  # one line, then the client goes away
    wait_until(lambda: live.health()["in_flight"] == 0, 60, "the abandoned request to end")
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"


def test_reasoning_content_streams_apart_from_the_answer(tokenizer):
    engine = ScriptedEngine(tokenizer, "Let me add: 2 + 2 = 4.\n</think>\n\nThe answer is 4.")
    with running(scripted(tokenizer, engine, prefill="<think>\n")) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        whole = client.chat.completions.create(model="scripted", messages=HELLO, max_tokens=64)
        message = whole.choices[0].message
        assert message.reasoning_content == "Let me add: 2 + 2 = 4."
        assert message.content == "The answer is 4."
        stream = client.chat.completions.create(
            model="scripted", messages=HELLO, max_tokens=64, stream=True
        )
        deltas = [c.choices[0].delta for c in stream if c.choices]
    thinking = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    answer = [d.content for d in deltas if d.content]
    assert len(thinking) > 3 and "".join(thinking) == message.reasoning_content
    assert "".join(answer) == message.content
    first_answer = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not getattr(d, "reasoning_content", None) for d in deltas[first_answer:])


def test_r1s_special_token_format_is_split_the_same_way(tokenizer):
    engine = ScriptedEngine(tokenizer, "|special_token| 3 * 3 = 9 |special_token| It is 9.")
    with running(scripted(tokenizer, engine, fmt=OutputFormat("r1"))) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        message = (
            client.chat.completions.create(model="scripted", messages=HELLO, max_tokens=64)
            .choices[0]
            .message
        )
    assert (message.reasoning_content, message.content) == ("3 * 3 = 9", "It is 9.")


def test_a_stop_string_ends_the_choice_and_is_named(tokenizer):
    engine = ScriptedEngine(tokenizer, "<answer>4</answer> and then more words")
    with running(scripted(tokenizer, engine)) as url:
        reply = httpx.post(
            url + "/chat/completions",
            json={"model": "scripted", "messages": HELLO, "stop": ["</answer>"]},
        ).json()
    choice = reply["choices"][0]
    assert choice["message"]["content"] == "<answer>4"
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "</answer>")
    assert engine.ended_early  # the engine stopped the row there


def test_concurrent_requests_are_batched_into_one_engine_call(tokenizer):
    gate = threading.Event()
    engine = ScriptedEngine(tokenizer, "Hi!", gate=gate)
    served = scripted(tokenizer, engine)
    with running(served) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        replies: list = []

        def ask() -> None:
            replies.append(client.chat.completions.create(model="scripted", messages=HELLO))

        first = threading.Thread(target=ask)
        first.start()
        wait_until(lambda: engine.calls, 30, "the first engine call")
        others = [threading.Thread(target=ask) for _ in range(3)]
        for thread in others:
            thread.start()
        wait_until(lambda: served.in_flight == 4, 30, "the three requests to queue")
        gate.set()
        for thread in [first, *others]:
            thread.join(timeout=60)
    assert engine.calls == [1, 3]  # the three that waited went in together
    assert [r.choices[0].message.content for r in replies] == ["Hi!"] * 4


def test_more_requests_than_allowed_get_429_and_an_abandoned_stream_frees_the_engine(tokenizer):
    engine = ScriptedEngine(tokenizer, "word " * 200, delay=0.01)
    served = scripted(tokenizer, engine, max_concurrent=1, max_tokens=400)
    with running(served) as url:
        body = {"model": "scripted", "messages": HELLO, "stream": True}
        with httpx.stream("POST", url + "/chat/completions", json=body) as held:
            lines = held.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)
            busy = httpx.post(url + "/chat/completions", json={**body, "stream": False})
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "rate_limit_exceeded"
        wait_until(lambda: engine.ended_early, 30, "the engine to end the abandoned row")
        wait_until(lambda: served.in_flight == 0, 30, "the request to leave")
        assert engine.ended_early[0] < 200
        again = httpx.post(
            url + "/chat/completions", json={**body, "stream": False, "max_tokens": 3}
        )
        assert again.status_code == 200


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "--port must be in [0, 65535]"),
        (["--template", "nope"], "unknown template 'nope'"),
        (["--engine", "vllm"], "--engine: unknown value 'vllm'"),
        (["--api-key-env", "A-B"], "--api-key-env must name an environment variable"),
    ],
)
def test_bad_serve_flags_are_one_line_errors(capsys, argv, message):
    assert cli.main(["serve", "tiny:llama", *argv]) == 2
    assert message in capsys.readouterr().err


def test_serving_an_endpoint_spec_is_refused(capsys):
    assert cli.main(["serve", "openai:m@http://127.0.0.1:9/v1"]) == 2
    assert "a model behind an endpoint already" in capsys.readouterr().err
