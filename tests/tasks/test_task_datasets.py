"""Dataset-backed tasks: JSONL loading and its errors, answer formats, splits, hub fallback."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.tasks import make_task
from r1lab.tasks.datasets import extract_gold

DATA = Path(__file__).resolve().parents[2] / "data"
SAMPLES = {
    "gsm8k": DATA / "gsm8k_sample.jsonl",
    "math500": DATA / "math_sample.jsonl",
    "aime2024": DATA / "aime_sample.jsonl",
}


def write_jsonl(path: Path, records: list[object]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_load_and_their_golds_grade_correct(name: str) -> None:
    for task in (
        make_task(name, {"path": str(SAMPLES[name])}),
        make_task(f"jsonl:{SAMPLES[name]}"),
    ):
        examples = task.examples("train") + task.examples("test")
        assert len(examples) >= 20
        assert all(task.grade(ex.answer, ex) for ex in examples)
        assert not any(task.grade("-123456789", ex) for ex in examples)
        assert len({ex.id for ex in examples}) == len(examples)


@pytest.mark.parametrize("name", [*sorted(SAMPLES), "jsonl"])
def test_splits_deterministic_and_disjoint(name: str) -> None:
    spec = f"jsonl:{SAMPLES['gsm8k']}" if name == "jsonl" else name
    options = {} if name == "jsonl" else {"path": str(SAMPLES[name]), "test_fraction": 0.3}
    a, b = make_task(spec, options), make_task(spec, options)
    for split in ("train", "test"):
        assert a.examples(split) == b.examples(split)
    train, test = a.examples("train"), a.examples("test")
    assert train and test
    assert {e.id for e in train}.isdisjoint({e.id for e in test})
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in test})


def test_benchmarks_are_all_test_by_default() -> None:
    task = make_task("aime2024", {"path": str(SAMPLES["aime2024"])})
    assert task.examples("train") == [] and len(task.examples("test")) == 22


def test_gsm8k_answer_and_solution_extraction() -> None:
    answer, solution = extract_gold("He pays 2*600=<<2*600=1200>>1200.\n#### 1,200", "auto")
    assert (answer, solution) == ("1200", "He pays 2*600=1200.")
    assert extract_gold("no marker", "gsm8k") == (None, None)
    assert extract_gold(r"so $\boxed{\frac{1}{2}}$.", "auto")[0] == r"\frac{1}{2}"
    assert extract_gold(" 42 ", "plain") == ("42", None)


def test_math_format_without_answer_field_uses_last_boxed(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {
                "problem": "What is $1+1$?",
                "solution": r"It is $\boxed{1}$... no, $\boxed{2}$.",
                "level": "Level 1",
                "type": "Prealgebra",
            }
        ],
    )
    (ex,) = make_task(f"jsonl:{path}", {"test_fraction": 0.0}).examples("train")
    assert ex.answer == "2" and ex.solution and ex.meta["type"] == "Prealgebra"


def test_case_insensitive_fields_int_answers_and_split_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "aime.jsonl",
        [
            {"ID": "a", "Problem": "P1", "Answer": 204, "part": "train"},
            {"ID": "b", "Problem": "P2", "Answer": 33, "part": "TEST"},
            {"ID": "c", "Problem": "P1", "Answer": 204, "part": "test"},  # duplicate prompt
        ],
    )
    task = make_task("aime2024", {"path": path})
    assert [e.answer for e in task.examples("test")] == ["204", "33"]
    task = make_task(f"jsonl:{path}", {"split_field": "part"})
    assert [e.prompt for e in task.examples("train")] == ["P1"]
    assert [e.prompt for e in task.examples("test")] == ["P2"]
    assert task.grade("033", task.examples("test")[0])


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n\n{"question": "q2", "answer": \n')
    with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid JSON"):
        make_task(f"jsonl:{path}")


def test_non_object_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(UserError, match=r"list\.jsonl:1: expected a JSON object, got list"):
        make_task(f"jsonl:{path}")


def test_missing_field_names_field_mapping_and_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", [{"question": "q", "reply": "1"}])
    with pytest.raises(UserError) as err:
        make_task(f"jsonl:{path}")
    message = str(err.value)
    assert "f.jsonl:1" in message and "answer" in message and "question, reply" in message
    with pytest.raises(UserError, match=r"missing prompt field 'body'.*prompt_field='body'"):
        make_task(f"jsonl:{path}", {"prompt_field": "body", "answer_field": "reply"})


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        make_task(f"jsonl:{tmp_path / 'nope.jsonl'}")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no records"):
        make_task(f"jsonl:{tmp_path / 'empty.jsonl'}")


def test_unparseable_golds_are_a_load_error_listing_rows(tmp_path: Path) -> None:
    records = [
        {"question": "ok", "answer": "so 7\n#### 7"},
        {"question": "no marker", "answer": "just text"},
        {"question": "broken", "answer": "see\n#### \\frac{"},
        {"question": "empty", "answer": "#### "},
    ]
    path = write_jsonl(tmp_path / "g.jsonl", records)
    with pytest.raises(UserError, match=r"3 of 4 rows .*g\.jsonl:3.*g\.jsonl:4") as err:
        make_task(f"jsonl:{path}", {"format": "gsm8k"})
    assert "g.jsonl:2: no answer found" in str(err.value)


def test_bad_options(tmp_path: Path) -> None:
    path = str(SAMPLES["gsm8k"])
    with pytest.raises(UserError, match="format"):
        make_task(f"jsonl:{path}", {"format": "yaml"})
    with pytest.raises(UserError, match="test_fraction"):
        make_task(f"jsonl:{path}", {"test_fraction": 1.5})
    with pytest.raises(UserError, match="valid options"):
        make_task("gsm8k", {"pth": path})
    bad_split = write_jsonl(tmp_path / "s.jsonl", [{"question": "q", "answer": "1", "s": "dev"}])
    with pytest.raises(UserError, match="split field 's'"):
        make_task(f"jsonl:{bad_split}", {"split_field": "s"})


def test_grading_an_example_rebuilt_elsewhere_and_from_a_thread() -> None:
    task = make_task("math500", {"path": str(SAMPLES["math500"])})
    rebuilt = Example(**task.examples("test")[2].to_dict())  # 3/4
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.extend([task.grade("0.75", rebuilt)]))
    thread.start()
    thread.join(timeout=60)
    assert results == [True]
    assert task.normalize("0.75") == task.normalize(r"\frac{3}{4}")


@pytest.mark.parametrize("name", ["gsm8k", "math500", "aime2024"])
def test_hub_offline_gives_clear_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # it reads env at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        make_task(name)
    assert time.perf_counter() - start < 30
    message = str(err.value)
    assert f"could not load {name} from the Hugging Face hub" in message
    assert f"task: {{name: {name}, options: {{path: data/" in message
    assert "jsonl:PATH" in message


def test_unreachable_hub_fails_fast_without_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setitem(sys.modules, "datasets", None)  # load_dataset must never be reached
    with pytest.raises(UserError, match=r"cannot connect to 127\.0\.0\.1:9.*gsm8k_sample"):
        make_task("gsm8k")
