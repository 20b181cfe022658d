"""A generative judge: a language model that says whether a prediction matches a reference.

R1's stage 3 kept samples of prompts no rule can check when "a generative reward model"
(DeepSeek-V3, fed the ground truth and the prediction) judged them correct. Here any model
spec can judge: it reads the question, the reference answer (when there is one) and the
prediction's final summary, and must end its reply with a verdict line, `Verdict: correct` or
`Verdict: incorrect`; a local judge's answer is prefilled with `Verdict:` so even a small model
keeps to the format. Decoding is greedy, so a verdict is a function of its inputs and a resumed
run reproduces it. The reply is read from the end: the last verdict line wins, and without one
the last verdict word (`correct`, `not correct`, `wrong`, ...), so "No errors; the prediction is
correct" is correct. A reply with no verdict at all gives None; such a sample is not kept.

Where a reference comes from: a rule-checkable example's gold `answer`; for a general prompt
(`general:` task, which has no answer), a `reference` field of its JSONL row, e.g.
`{"prompt": "Name the capital of France.", "reference": "Paris"}` (the task keeps short
fields under 200 characters in `Example.meta`). Without one the judge sees the question alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from r1lab.core.types import Example
from r1lab.text.formats import SPECIAL_TOKEN, summary_text

INSTRUCTION = (
    "You are grading an answer to a question.\n"
    "Question: {question}\n"
    "{reference}"
    "Answer to grade: {prediction}\n"
    "Is the answer to grade correct?\n"
    "End your reply with one line: `Verdict: correct` or `Verdict: incorrect`."
)
REFERENCE_LINE = "Reference answer: {reference}\n"
PREFILL = "Verdict:"
_WORDS = r"not\s+correct|not\s+right|incorrect|wrong|false|correct|right|true|yes|no"
_LINE_RE = re.compile(rf"verdict\W{{0,3}}\s*\**\s*({_WORDS})\b", re.IGNORECASE)
_WORD_RE = re.compile(rf"\b({_WORDS})\b", re.IGNORECASE)
_POSITIVE = {"correct", "right", "true", "yes"}


@dataclass(frozen=True)
class Verdict:
    correct: bool | None  # None: the judge's text held no recognisable verdict
    text: str  # what the judge wrote


def judge_prompt(question: str, reference: str, prediction: str) -> str:
    """The judge's instruction for one prediction (no reference line without a reference).

    >>> print(judge_prompt("2+2?", "4", "It is 4."))
    You are grading an answer to a question.
    Question: 2+2?
    Reference answer: 4
    Answer to grade: It is 4.
    Is the answer to grade correct?
    End your reply with one line: `Verdict: correct` or `Verdict: incorrect`.
    """
    line = REFERENCE_LINE.format(reference=reference) if reference.strip() else ""
    return INSTRUCTION.format(question=question, reference=line, prediction=prediction)


def parse_verdict(text: str) -> bool | None:
    """The verdict a judge's reply ends with: True, False, or None when it gives none.

    The last `Verdict: ...` line decides; without one, the last verdict word. Reading from the
    end matters: a reply that reasons first ("No errors; the prediction is correct") must not
    be decided by a word it used on the way.

    >>> parse_verdict("Verdict: correct"), parse_verdict(" incorrect"), parse_verdict("**Correct**")
    (True, False, True)
    >>> parse_verdict("No errors; the prediction is correct"), parse_verdict("not correct")
    (True, False)
    >>> parse_verdict("Looks right at first. Verdict: **incorrect**"), parse_verdict("I can't tell")
    (False, None)
    """
    lines = list(_LINE_RE.finditer(text))
    found = lines[-1] if lines else next(reversed(list(_WORD_RE.finditer(text))), None)
    if found is None:
        return None
    return " ".join(found.group(1).lower().split()) in _POSITIVE


def judge_inputs(
    example: Example,
    text: str,
    answer: str | None,
    style: str = "think",
    special_token: str = SPECIAL_TOKEN,
) -> tuple[str, str, str]:
    """(question, reference, prediction) the judge reads for one response.

    The reference is the gold answer, else a general prompt's `reference` field; the
    prediction is the summary after the reasoning, else the extracted answer, else "".

    >>> ex = Example("g1", "Capital of France?", "", meta={"reference": "Paris"})
    >>> judge_inputs(ex, "<think>hm</think><answer>Paris.</answer>", "Paris.")
    ('Capital of France?', 'Paris', 'Paris.')
    """
    reference = example.answer.strip() or str(example.meta.get("reference", "")).strip()
    prediction = summary_text(text, style, special_token) or (answer or "").strip()
    return example.prompt, reference, prediction


class Judge:
    """A judge model behind a rollout engine, decoding greedily.

    A model behind an endpoint (`openai:MODEL@URL`) is asked through the endpoint engine, its
    replies cached in `cache`; its answer cannot be prefilled with `Verdict:`, so give it room
    (`judge.max_new_tokens`) to write the verdict line the instruction asks for.
    """

    def __init__(
        self,
        spec: str,
        dtype: str = "float32",
        max_new_tokens: int = 8,
        device: str = "auto",
        cache: Any = None,
    ) -> None:
        from r1lab.core.models import endpoint_parts
        from r1lab.rollout import SamplingParams

        self.params = SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0)
        if endpoint_parts(spec):
            from r1lab.rollout.endpoint import EndpointEngine

            self.engine, self.tokenizer = EndpointEngine(spec, cache), None
        else:
            self.engine, self.tokenizer = _local_engine(spec, dtype, max_new_tokens, device)

    def render(self, instruction: str) -> Any:
        """The instruction as a user turn of the judge's chat template (plain text without),
        the answer prefilled with `Verdict:`; for an endpoint, the chat message alone."""
        from r1lab.text.templates import Prompt

        if self.tokenizer is None:
            return Prompt(instruction, messages=(("user", instruction),))
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": instruction}]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return Prompt(text + PREFILL, prefill=PREFILL, add_special_tokens=False)
        return Prompt(f"{instruction}\n{PREFILL}", prefill=PREFILL)

    def verdicts(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """One verdict per (question, reference, prediction); an empty prediction is wrong."""
        asked = [i for i, (_, _, prediction) in enumerate(items) if prediction.strip()]
        prompts = [self.render(judge_prompt(*items[i])) for i in asked]
        groups = self.engine.generate(prompts, self.params) if prompts else []
        texts = [
            prompt.prefill + group[0].text for prompt, group in zip(prompts, groups, strict=True)
        ]
        found = [Verdict(False, "")] * len(items)
        for i, text in zip(asked, texts, strict=True):
            found[i] = Verdict(parse_verdict(text), text)
        return found


def _local_engine(spec: str, dtype: str, max_new_tokens: int, device: str) -> tuple[Any, Any]:
    """(engine, tokenizer) of a local judge model on `device`."""
    import torch

    from r1lab.core.models import load_model
    from r1lab.rollout import make_engine

    model, tokenizer = load_model(spec, dtype)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(torch.device(device))
    # a prompt is cut (from the left) only where it exceeds the judge's own context
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    room = max(1, context - max_new_tokens)
    return make_engine("prefix", model, tokenizer, max_prompt_tokens=room), tokenizer
