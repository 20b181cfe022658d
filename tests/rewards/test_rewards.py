"""Rewards: the strict/partial format checks, accuracy via a task, language share, overlong
ramp, the registry and the error messages a user sees when a reward or its config is wrong."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from r1lab.core.errors import UserError
from r1lab.core.types import Example
from r1lab.rewards import (
    REWARDS,
    RewardInputs,
    RewardTerm,
    check_terms,
    compute_rewards,
    register_reward,
    resolve_reward,
)
from r1lab.tasks.base import Task
from r1lab.text.formats import format_ok
from r1lab.text.reflection import count_reflections

EX = Example(id="q1", prompt="1+1", answer="2")
PERFECT = "<think>1 plus 1 is 2</think>\n<answer>2</answer>"


class ExactTask(Task):
    """Correct when the extracted answer equals the gold answer exactly."""

    name = "exact"

    def examples(self, split: str, limit: int | None = None) -> list[Example]:
        return [EX]

    def grade(self, answer: str | None, example: Example) -> bool:
        return answer is not None and answer == example.answer


def inputs_for(completions: list[str], **kw) -> RewardInputs:
    examples = [Example(id=f"q{i}", prompt="p", answer="2") for i in range(len(completions))]
    return RewardInputs(completions, examples, **kw)


def one(name: str, completion: str, **kw) -> float | None:
    params = kw.pop("params", {})
    return REWARDS[name](inputs_for([completion], **kw), **params)[0]


# ---------------------------------------------------------------- format


def test_format_perfect_and_surrounding_whitespace():
    assert one("format", PERFECT) == 1.0
    assert one("format", "\n  " + PERFECT + "\n\n") == 1.0
    assert format_ok("<think></think><answer>2</answer>")  # empty thought is allowed


def test_format_counts_the_prefill():
    completion = "1 plus 1 is 2\n</think>\n<answer>2</answer>"
    assert one("format", completion) == 0.0
    assert one("format", completion, prefill="<think>\n") == 1.0
    # A completion that repeats the prefilled tag has two <think> tags: not the format.
    assert one("format", PERFECT, prefill="<think>\n") == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "<think>2</think>",  # no answer block
        "<answer>2</answer>",  # no think block
        "<think>2<answer>2</answer>",  # unclosed think
        "<think>a <think>b</think> c</think><answer>2</answer>",  # nested think
        "<think>a</think><answer>2</answer><answer>3</answer>",  # duplicate answer
        "<think>a <answer>2</answer></think>",  # answer inside think
        "<think>a</think> so <answer>2</answer>",  # text between the blocks
        "<think>a</think><answer>2</answer> the end",  # text after </answer>
        "<think>a</think><answer>  \n</answer>",  # empty answer
        "Sure! <think>a</think><answer>2</answer>",  # text before <think>
        "<answer>2</answer><think>a</think>",  # blocks swapped
    ],
)
def test_format_rejects(text):
    assert not format_ok(text)
    assert one("format", text) == 0.0


def test_format_allow_trailing():
    text = PERFECT + " <|endoftext|>"
    assert one("format", text) == 0.0
    assert one("format", text, params={"allow_trailing": True}) == 1.0


# ---------------------------------------------------------------- tag_count


def test_tag_count_grows_with_each_well_placed_tag():
    steps = ["", "<think>a", "<think>a</think>", "<think>a</think><answer>2", PERFECT]
    scores = [one("tag_count", s) for s in steps]
    assert scores == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_tag_count_uses_prefill_and_placement():
    assert one("tag_count", "a</think><answer>2</answer>", prefill="<think>\n") == 1.0
    assert one("tag_count", "a</think><answer>2</answer>") == 0.75
    assert one("tag_count", "Sure. <think>a</think><answer>2</answer>") == 0.75  # late <think>
    assert one("tag_count", "<think>a<think>b</think><answer>2</answer>") == 0.75  # repeated
    assert one("tag_count", "</think><think>") == 0.0  # out of order: neither earns
    assert one("tag_count", "<answer>2</answer>") == 0.5


def test_tag_count_trailing_text_penalty_is_proportional_and_capped():
    assert one("tag_count", PERFECT + "  \n") == 1.0
    assert one("tag_count", PERFECT + "x" * 100) == pytest.approx(0.9)
    assert one("tag_count", PERFECT + "x" * 10_000) == 0.75
    assert one("tag_count", PERFECT + "x" * 10, params={"trailing_penalty": 0.01}) == 0.9


# ---------------------------------------------------------------- accuracy


def test_accuracy_uses_the_task_grader_on_prefill_plus_completion():
    task = ExactTask()
    batch = inputs_for(["<answer>2</answer>", "<answer>3</answer>", "no answer"], task=task)
    assert REWARDS["accuracy"](batch) == [1.0, 0.0, 0.0]
    # The answer block may begin in the prefill.
    assert one("accuracy", "2</answer>", task=task, prefill="<answer>") == 1.0


def test_accuracy_without_task_is_a_clear_error():
    with pytest.raises(UserError, match="needs a task"):
        compute_rewards([RewardTerm("accuracy")], inputs_for(["<answer>2</answer>"]))


# ---------------------------------------------------------------- language_consistency


def test_language_consistency_pure_and_mixed():
    english = "<think>First add one and one, the sum is two.</think><answer>2</answer>"
    chinese = "<think>首先把一和一相加</think><answer>2</answer>"
    # 10 Latin letters (Let, me, check) and 4 Han characters (我们计算): one letter, one count
    mixed = "<think>Let me check 我们计算 = 2</think><answer>2</answer>"
    batch = inputs_for([english, chinese, mixed])
    fn = REWARDS["language_consistency"]
    assert fn(batch) == [1.0, 0.0, pytest.approx(10 / 14)]
    assert fn(batch, language="zh") == [0.0, 1.0, pytest.approx(4 / 14)]
    batch.language = "zh"  # the run's target language is the default
    assert fn(batch) == [0.0, 1.0, pytest.approx(4 / 14)]


def test_a_thought_without_words_is_consistent_not_below_a_mixed_one():
    """Inside a group, pure arithmetic must not score below a half-foreign thought."""
    symbolic = "<think>59 + 67 = 126</think><answer>126</answer>"
    half_chinese = "<think>we add 我们相加</think><answer>126</answer>"
    values = REWARDS["language_consistency"](inputs_for([symbolic, half_chinese]))
    assert values[0] == 1.0 and values[0] > values[1]


def test_language_consistency_looks_at_the_thought_only():
    # The answer is outside the chain of thought, so its language does not count.
    assert one("language_consistency", "<think>we add</think><answer>二</answer>") == 1.0
    # With the think block opened by the prefill, the thought runs up to </think>.
    text = "we add them</think><answer>二</answer>"
    assert one("language_consistency", text, prefill="<think>\n") == 1.0
    # Without think tags the whole response is the thought.
    assert one("language_consistency", "we add 二") == pytest.approx(5 / 6)


def test_language_consistency_ignores_math_and_is_neutral_without_words():
    # Single-letter variables, LaTeX commands and numbers count for no language.
    text = r"<think>设 x = 3，则 \frac{x}{2} = 1.5</think>"
    assert one("language_consistency", text, language="zh") == 1.0
    assert one("language_consistency", "<think>12 * 3 = 36</think><answer>36</answer>") == 1.0
    assert one("language_consistency", "") == 1.0


@pytest.mark.parametrize(
    ("language", "text", "as_zh"),
    [
        ("ja", "ひらがなとカタカナと漢字", 2 / 12),  # 漢字 are Han, so they count for zh too
        ("ko", "안녕하세요 세계", 0.0),
        ("ru", "Привет мир", 0.0),
        ("ar", "مَرْحَبًا بالعالم", 0.0),  # diacritics are part of the script
        ("fa", "سلام دنیا", 0.0),
        ("ur", "ہیلو دنیا", 0.0),
        ("en", "Hello world", 0.0),
    ],
)
def test_language_consistency_scripts(language, text, as_zh):
    thought = f"<think>{text}</think>"
    assert one("language_consistency", thought, language=language) == 1.0
    assert one("language_consistency", thought, language="zh") == pytest.approx(as_zh)


def test_language_consistency_unknown_language_lists_valid_ones():
    with pytest.raises(UserError, match="valid languages: .*zh"):
        compute_rewards(
            [RewardTerm("language_consistency", params={"language": "klingon"})],
            inputs_for(["<think>a b</think>"]),
        )


# ---------------------------------------------------------------- overlong


def test_overlong_ramp_boundaries():
    lengths = [0, 750, 751, 800, 875, 999, 1000, 1001]
    batch = inputs_for(["x"] * len(lengths), lengths=lengths, max_length=1000)
    # Default buffer L // 4 = 250: free up to 750, then a linear ramp to -1 at 1000.
    expected = [0.0, 0.0, -1 / 250, -50 / 250, -125 / 250, -249 / 250, -1.0, -1.0]
    assert REWARDS["overlong"](batch) == pytest.approx(expected)
    assert REWARDS["overlong"](batch, buffer=100)[4:6] == pytest.approx([0.0, -0.99])


def test_overlong_needs_lengths_and_a_valid_buffer():
    with pytest.raises(UserError, match="lengths"):
        REWARDS["overlong"](inputs_for(["x"], max_length=10))
    with pytest.raises(UserError, match="buffer"):
        REWARDS["overlong"](inputs_for(["x"], lengths=[3], max_length=10), buffer=0)


# ---------------------------------------------------------------- the readable R1 format

R1 = {"style": "r1"}
R1_TEXT = (
    "|special_token|\n3 + 4 = 7.\nCheck: 7 - 4 = 3\n|special_token|\nThe answer is \\boxed{7}."
)


def test_r1_format_accepts_the_cold_start_rendering():
    from r1lab.sft.data import render_completion

    example = Example("q", "What is 3 + 4?", "7", solution="3 + 4 = 7.")
    for token in ("|special_token|", "<|sep|>"):
        text = render_completion(example, "r1", token)
        assert one("format", text, params={"style": "r1", "special_token": token}) == 1.0
        assert one("tag_count", text, params={"style": "r1", "special_token": token}) == 1.0
    assert one("format", R1_TEXT, params=R1) == 1.0
    assert one("format", "  " + R1_TEXT + "\n", params=R1) == 1.0
    assert one("format", "|special_token||special_token|4", params=R1) == 1.0  # empty thought
    assert one("format", R1_TEXT) == 0.0  # the default style is still the tag format
    assert one("format", PERFECT, params=R1) == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "3 + 4 = 7 |special_token| The answer is 7.",  # no opening delimiter
        "|special_token| 3 + 4 = 7, the answer is 7.",  # the reasoning never closes
        "Sure. |special_token| 3 + 4 = 7 |special_token| 7",  # text before the reasoning
        "|special_token| a |special_token| b |special_token| 7",  # a third delimiter
        "|special_token| 3 + 4 = 7 |special_token|  \n",  # empty summary
        "<|sep|> 3 + 4 = 7 <|sep|> 7",  # another delimiter than the configured one
    ],
)
def test_r1_format_rejects(text):
    assert one("format", text, params=R1) == 0.0
    assert not format_ok(text, style="r1")


def test_r1_tag_count_gives_half_credit_per_delimiter():
    cases = {
        "no delimiter at all": 0.0,
        "|special_token| thinking...": 0.5,
        "|special_token| 3 + 4 = 7 |special_token| ": 0.5,  # closed, but no summary yet
        "thinking |special_token| 7": 0.0,  # the delimiter does not open the response
        R1_TEXT: 1.0,
        "|special_token| a |special_token| b |special_token| c": 0.0,
    }
    assert {text: one("tag_count", text, params=R1) for text in cases} == cases


def test_r1_summary_answer_grades_with_the_task_extraction():
    from r1lab.tasks import make_task

    task = make_task("arith", {"digits": 1, "train_size": 5, "test_size": 0})
    example = Example("q", "What is 3 + 4?", "7")
    texts = [R1_TEXT, R1_TEXT.replace("{7}", "{8}"), R1_TEXT.replace("\\boxed{7}", "7")]
    batch = RewardInputs(texts, [example] * 3, task=task)
    # A summary that states the answer without \boxed{} commits to none: no free-text mining.
    assert REWARDS["accuracy"](batch) == [1.0, 0.0, 0.0]


def test_r1_language_consistency_reads_the_reasoning_between_the_delimiters():
    texts = [
        "|special_token| we add them 我们 |special_token| 答案是 7",  # summary not counted
        "|special_token| 3 + 4 = 7 |special_token| The answer is seven.",  # no words in thought
    ]
    fn = REWARDS["language_consistency"]
    assert fn(inputs_for(texts), style="r1") == [pytest.approx(9 / 11), 1.0]
    assert fn(inputs_for(texts))[1] == pytest.approx(1.0)  # the tag style sees it all as thought


def test_summary_text_per_style():
    from r1lab.text.formats import summary_text

    assert summary_text("<think>a</think>\n\nIt is 7.") == "It is 7."
    assert summary_text("<think>a</think><answer>7</answer>") == "7"
    assert summary_text("a</think> 7") == "7"  # the prefill opened the thought
    assert summary_text("<think>a</think> x </think> 7") == "7"  # after the last close
    assert summary_text("no thought closed") == ""
    assert summary_text(R1_TEXT, style="r1") == "The answer is \\boxed{7}."
    assert summary_text("|special_token| unfinished", style="r1") == ""


def test_style_params_are_checked_at_config_time():
    check_terms([RewardTerm("format", params={"style": "r1", "special_token": "<sep>"})])
    with pytest.raises(UserError, match="reward 'format': unknown format style 'xml'"):
        check_terms([RewardTerm("format", params={"style": "xml"})])
    with pytest.raises(UserError, match="reward 'tag_count': special_token must be a non-empty"):
        check_terms([RewardTerm("tag_count", params={"style": "r1", "special_token": " "})])
    with pytest.raises(UserError, match="unknown format style"):
        one("language_consistency", "x", params={"style": "xml"})


# ---------------------------------------------------------------- general prompts


def test_accuracy_does_not_apply_to_general_prompts():
    general = Example(id="g", prompt="Write a haiku about rain.", answer="")
    assert not general.checkable and EX.checkable
    batch = RewardInputs(["<answer>2</answer>"] * 2, [EX, general], task=ExactTask())
    assert REWARDS["accuracy"](batch) == [1.0, None]


# ---------------------------------------------------------------- compute_rewards


@pytest.fixture
def temp_reward():
    names: list[str] = []

    def add(name, fn):
        names.append(name)
        REWARDS[name] = fn
        return name

    yield add
    for name in names:
        REWARDS.pop(name, None)


def test_compute_rewards_weights_and_skips_none(temp_reward):
    def skip_odd(inputs: RewardInputs) -> list[float | None]:
        return [None if i % 2 else 1.0 for i in range(len(inputs.completions))]

    temp_reward("skip_odd", skip_odd)
    terms = [RewardTerm("format", 2.0), RewardTerm("tag_count", 0.5), RewardTerm("skip_odd", -3.0)]
    total, per_term = compute_rewards(terms, inputs_for([PERFECT, "<think>a", "nothing"]))
    assert per_term == {
        "format": [1.0, 0.0, 0.0],
        "tag_count": [1.0, 0.25, 0.0],
        "skip_odd": [1.0, None, 1.0],
    }
    assert total == pytest.approx([2.0 + 0.5 - 3.0, 0.125, -3.0])
    total, _ = compute_rewards([RewardTerm("skip_odd")], inputs_for(["a", "b"]))
    assert total == [1.0, 0.0]  # a sample whose every value is None totals 0.0


def test_raising_reward_names_reward_and_sample(temp_reward):
    def fragile(inputs):
        return [1.0 / len(c) for c in inputs.completions]  # ZeroDivisionError on ""

    temp_reward("fragile", fragile)
    with pytest.raises(UserError, match=r"'fragile' failed on sample 2 \(example 'q2'\)") as err:
        compute_rewards([RewardTerm("fragile")], inputs_for(["a", "b", "", "c"]))
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_batch_only_failure_still_names_the_reward(temp_reward):
    def needs_pairs(inputs):
        if len(inputs.completions) == 3:
            raise RuntimeError("batch of three")
        return [0.0] * len(inputs.completions)

    temp_reward("needs_pairs", needs_pairs)
    with pytest.raises(UserError, match="'needs_pairs' failed on a batch of 3"):
        compute_rewards([RewardTerm("needs_pairs")], inputs_for(["a", "b", "c"]))


@pytest.mark.parametrize(
    ("values", "message"),
    [([1.0], "returned 1 values for 2"), ((x for x in [1.0, 2.0]), "returned"),
     ([1.0, math.nan], r"nan for sample 1 \(example 'q1'\)"), ([1.0, math.inf], "inf"),
     ([1.0, "1"], "returned '1' for sample 1")],
)
def test_bad_reward_values_are_user_errors(temp_reward, values, message):
    temp_reward("bad", lambda inputs: values)
    with pytest.raises(UserError, match=message):
        compute_rewards([RewardTerm("bad")], inputs_for(["a", "b"]))


def test_inputs_with_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="examples"):
        RewardInputs(["a", "b"], [EX])


# ---------------------------------------------------------------- registry and config checks


def test_resolve_reward_by_name_and_import_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert resolve_reward("format") is REWARDS["format"]
    fn = resolve_reward("user_rewards:constant")
    assert fn(inputs_for(["a", "b"])) == [0.5, 0.5]
    terms = [RewardTerm("user_rewards:constant", 2.0, {"value": 0.25})]
    check_terms(terms)
    assert compute_rewards(terms, inputs_for(["a"])) == (
        [0.5], {"user_rewards:constant": [0.25]}
    )


def test_resolve_reward_errors_say_what_is_valid(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    guess = r"unknown reward 'acuracy' \(did you mean 'accuracy'\?\); valid rewards: .*format"
    with pytest.raises(UserError, match=guess):
        resolve_reward("acuracy")
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        resolve_reward("no_such_module_xyz:fn")
    with pytest.raises(UserError, match="no attribute 'missing'"):
        resolve_reward("user_rewards:missing")
    with pytest.raises(UserError, match="not callable"):
        resolve_reward("user_rewards:NOT_A_FUNCTION")
    with pytest.raises(UserError, match="package.module:function"):
        resolve_reward("user_rewards:")


def test_check_terms_rejects_unknown_params_listing_valid_ones():
    check_terms([RewardTerm("format", params={"allow_trailing": True}), RewardTerm("overlong")])
    guess = r"'buffr' for reward 'overlong' \(did you mean 'buffer'\?\); valid params: buffer"
    with pytest.raises(UserError, match=guess):
        check_terms([RewardTerm("overlong", params={"buffr": 10})])
    with pytest.raises(UserError, match=r"valid params: \(none\)"):
        check_terms([RewardTerm("accuracy", params={"strict": True})])
    with pytest.raises(UserError, match="unknown reward"):
        check_terms([RewardTerm("nope")])
    with pytest.raises(UserError, match="twice"):
        check_terms([RewardTerm("format"), RewardTerm("format", 0.5)])
    with pytest.raises(UserError, match="weight"):
        check_terms([RewardTerm("format", math.nan)])


def test_one_reward_serves_two_terms_under_their_own_names():
    terms = [
        RewardTerm("strict", 1.0, {}, reward="format"),
        RewardTerm("lenient", 0.5, {"allow_trailing": True}, reward="format"),
    ]
    check_terms(terms)
    total, per_term = compute_rewards(terms, inputs_for([PERFECT + " bye"]))
    assert per_term == {"strict": [0.0], "lenient": [1.0]} and total == [0.5]
    with pytest.raises(UserError, match=r"listed twice.*\{name: other_name, reward: format\}"):
        check_terms([RewardTerm("format"), RewardTerm("format", reward="format")])
    with pytest.raises(UserError, match="'buffr' for reward 'late'"):
        check_terms([RewardTerm("late", params={"buffr": 1}, reward="overlong")])


def test_registry_refuses_a_second_function_under_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("format")(lambda inputs: [])


# ---------------------------------------------------------------- reflections


def test_count_reflections():
    text = (
        "Wait, that is wrong. Let me re-check: recheck, Double check. Hmm... "
        "Actually I made a MISTAKE, let me verify. awaited waiting mistakes verification"
    )
    # wait, let me re-check, recheck, Double check, Hmm, Actually, MISTAKE, let me verify
    assert count_reflections(text) == 8
    assert count_reflections("The answer is 4.") == 0
