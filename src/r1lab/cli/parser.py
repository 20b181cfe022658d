"""The `r1lab` command line: every command, flag and default (argument tables only)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from r1lab import __version__
from r1lab.cli.commands import (
    ZERO_RECIPE,
    cmd_chat,
    cmd_distill,
    cmd_eval,
    cmd_models,
    cmd_pipeline,
    cmd_plot,
    cmd_preflight,
    cmd_sample,
    cmd_serve,
    cmd_sft,
    cmd_tasks,
    cmd_train,
    cmd_zero,
)
from r1lab.eval.protocol import PROTOCOL
from r1lab.text.formats import SPECIAL_TOKEN


class _Parser(argparse.ArgumentParser):
    """argparse with r1lab's error form: one line, naming the command and its --help."""

    def error(self, message: str) -> NoReturn:
        Console(stderr=True).print(
            Text("error: ", style="red") + Text(f"{self.prog}: {message} (see {self.prog} --help)"),
            soft_wrap=True,
        )
        raise SystemExit(2)


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="r1lab", description="The DeepSeek-R1 recipe: GRPO with rule rewards and friends."
    )
    parser.add_argument("--version", action="version", version=f"r1lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: object, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    def with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("config", nargs=None if required else "?", help="recipe YAML")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set grpo.group_size=4 (repeatable)",
        )

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json", action="store_true", help="JSON lines on stdout instead of tables"
        )

    def output_flags(p: argparse.ArgumentParser, quiet_help: str) -> None:
        """--quiet and --json: what a script running the command wants."""
        p.add_argument("--quiet", action="store_true", help=quiet_help)
        json_flag(p)

    steps = "no per-step progress lines (warnings and the result still show)"
    json_flag(add("models", cmd_models, "list built-in model specs and what is cached"))
    p = add("tasks", cmd_tasks, "list tasks, or show examples of one")
    json_flag(p)
    p.add_argument("name", nargs="?", help="task name or jsonl:PATH")
    p.add_argument("-n", type=_at_least_one, default=3, help="examples to show")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="task option")
    p = add("preflight", cmd_preflight, "sample a few completions, score them, warn about traps")
    with_config(p)
    p.add_argument("--prompts", type=_at_least_one, default=2)
    p.add_argument("--samples", type=_at_least_one, default=4)
    p.add_argument(
        "--nproc-per-node",
        type=_at_least_one,
        help="check the distributed settings for a torchrun launch with this many processes "
        "per machine (default: this launch's)",
    )
    p.add_argument("--nnodes", type=_at_least_one, default=1, help="machines of that launch")
    json_flag(p)

    def resumable(p: argparse.ArgumentParser, resume_help: str) -> None:
        """A recipe-running command: config, --set, --resume, --quiet, --json."""
        with_config(p)
        p.add_argument("--resume", action="store_true", help=resume_help)
        output_flags(p, steps)

    newest = "continue from the newest checkpoint"
    resumable(add("train", cmd_train, "train with GRPO from a recipe"), newest)
    sft_help = "supervised fine-tuning (the cold start) from a `kind: sft` recipe"
    resumable(add("sft", cmd_sft, sft_help), newest)
    sample_help = "rejection sampling: keep correct, readable samples as SFT rows"
    resumable(add("sample", cmd_sample, sample_help), "continue; finished prompts are kept")
    distill_help = "sample a teacher, then fine-tune a student on its rows"
    resumable(add("distill", cmd_distill, distill_help), "continue where it stopped")
    p = add("zero", cmd_zero, f"R1-Zero: GRPO on the built-in model ({ZERO_RECIPE})")
    with_config(p, required=False)
    output_flags(p, steps)
    p = add("pipeline", cmd_pipeline, "run the R1 stages of a `kind: pipeline` YAML, then evaluate")
    p.add_argument("config", help="pipeline YAML, e.g. recipes/r1_mini.yaml")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a stage's recipe (cold_start.train.steps=5) or a pipeline key (eval.k=2)",
    )
    p.add_argument("--only", metavar="STAGE", help="run one stage (its inputs must be up to date)")
    p.add_argument(
        "--from", dest="rerun_from", metavar="STAGE", help="re-run STAGE and all later stages"
    )
    output_flags(p, steps)
    p = add("plot", cmd_plot, "write PNG figures of a run: rewards, GRPO health, length, loss")
    p.add_argument("run", help="run directory, e.g. runs/r1_zero_arith")
    json_flag(p)
    p = add("eval", cmd_eval, "pass@1 over k samples, cons@k, pass@k on a task's test split")
    p.add_argument(
        "--model",
        help="model spec, checkpoint dir or openai:MODEL@URL (default: the built-in model)",
    )
    p.add_argument("--task", help="task name or jsonl:PATH (with --run: the run's task)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="task option")
    p.add_argument("--template", help="prompt template (default r1_zero; --run: the run's)")
    p.add_argument("--shots", type=int, help="worked train examples shown first (default 0)")
    p.add_argument("--shot-style", choices=["brief", "solution"], help="default brief")
    p.add_argument("--k", type=int, default=PROTOCOL.k, help="samples per problem")
    p.add_argument("--temperature", type=float, default=PROTOCOL.temperature)
    p.add_argument("--top-p", type=float, default=PROTOCOL.top_p)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (forces k=1)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"default {PROTOCOL.max_new_tokens} (--run: the run's)",
    )
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument(
        "--style",
        choices=["think", "r1"],
        help="response format `format` is judged in (default think; --run: the run's)",
    )
    p.add_argument("--special-token", help="the r1 style's delimiter (default |special_token|)")
    p.add_argument("--limit", type=_at_least_one, help="evaluate the first N test problems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default evals/<model>_<task>_...)")
    p.add_argument("--engine", default="prefix", help="rollout engine: prefix, hf or vllm")
    p.add_argument(
        "--batch-size", type=int, default=16, help="problems per engine call and results write"
    )
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--compute-dtype", default="float32", help="bfloat16: bf16 matmuls (faster on bf16 CPUs)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--concurrency", type=_at_least_one, default=8, help="requests at once to an endpoint"
    )
    p.add_argument(
        "--split", choices=["train", "test"], help="the task's split to evaluate (default test)"
    )
    output_flags(p, "no progress lines")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="compare eval directories")
    p.add_argument("--plot-out", help="PNG path for --compare (default next to the first DIR)")
    p.add_argument("--run", help="evaluate every checkpoint of a run directory")

    def served_model(p: argparse.ArgumentParser) -> None:
        """How `serve` and `chat` load a model and read its responses."""
        p.add_argument("model", help="model spec or checkpoint dir, e.g. runs/x/final")
        p.add_argument(
            "--template",
            default="model",
            help="model (its own chat template) or an r1lab template: chat, chat_think, ...",
        )
        p.add_argument("--prefill", default="", help=r"the answer's start, e.g. '<think>\n'")
        p.add_argument("--style", default="think", choices=["think", "r1"], help="reasoning format")
        p.add_argument("--special-token", default=SPECIAL_TOKEN, help="the r1 style's delimiter")
        p.add_argument("--engine", default="prefix", help="prefix or hf")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--compute-dtype", default="float32", help="bfloat16: bf16 matmuls")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        p.add_argument("--threads", type=_at_least_one, help="torch CPU threads (default: all)")

    p = add("serve", cmd_serve, "serve a model over an OpenAI-compatible HTTP API")
    served_model(p)
    p.add_argument("--name", help="the model name clients send (default: the spec)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="0: any free port")
    p.add_argument("--api-key-env", default="R1LAB_API_KEY", help="env var holding the key")
    p.add_argument("--max-tokens", type=_at_least_one, default=512, help="per choice")
    p.add_argument("--max-prompt-tokens", type=_at_least_one, default=2048)
    p.add_argument("--max-concurrent", type=_at_least_one, default=64, help="requests")
    p.add_argument("--max-n", type=_at_least_one, default=8, help="choices per request")
    p.add_argument("--max-body-bytes", type=_at_least_one, default=1_000_000)
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="wait for a batch")
    p.add_argument("--max-batch", type=_at_least_one, default=32, help="choices per call")
    p = add("chat", cmd_chat, "talk to a model in the terminal, its thinking shown apart")
    served_model(p)
    p.add_argument("--hide-thinking", action="store_true", help="show only the answers")
    p.add_argument("--max-tokens", type=_at_least_one, default=512)
    p.add_argument("--temperature", type=float, default=PROTOCOL.temperature)
    p.add_argument("--top-p", type=float, default=PROTOCOL.top_p)
    p.add_argument("--seed", type=int, help="fix the sampling (default: random)")
    p.add_argument("--system", help="a system message (with --template model)")
    return parser
