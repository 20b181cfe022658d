"""`r1lab <command>`: thin wrappers that parse arguments and call one function each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from r1lab import __version__
from r1lab.core.errors import UserError
from r1lab.eval.protocol import PROTOCOL

console = Console()
ZERO_RECIPE = "recipes/r1_zero_arith.yaml"


def _config(args: argparse.Namespace) -> object:
    from r1lab.grpo.config import load_config

    return load_config(args.config, args.set or [])


def cmd_models(args: argparse.Namespace) -> None:
    from r1lab.core.models import list_models

    table = Table("spec", "description", "cache")
    for row in list_models():
        table.add_row(row["spec"], row["description"], row["cache"])
    console.print(table)


def cmd_tasks(args: argparse.Namespace) -> None:
    from r1lab.tasks import TASKS, make_task

    if not args.name:
        table = Table("task", "description")
        for name, cls in sorted(TASKS.items()):
            table.add_row(name, (cls.__doc__ or "").strip().splitlines()[0])
        console.print(table)
        console.print("show examples: r1lab tasks NAME [-n 3] [--option key=value]")
        return
    options = dict(_parse_kv(o) for o in args.option or [])
    task = make_task(args.name, options)
    for ex in task.examples(args.split, limit=args.n):
        console.rule(f"[bold]{ex.id}")
        console.print(f"[bold]prompt:[/bold] {ex.prompt}")
        console.print(f"[bold]answer:[/bold] {ex.answer}")
        if ex.solution:
            console.print(f"[bold]solution:[/bold] {ex.solution}")


def _parse_kv(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise UserError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def cmd_preflight(args: argparse.Namespace) -> None:
    config = _config(args)
    from r1lab.grpo.preflight import preflight

    report = preflight(config, prompts=args.prompts, samples=args.samples)
    for sample in report.samples:
        console.rule(f"[bold]{sample['id']}  answer={sample['answer']}")
        console.print(sample["completion"], markup=False)
        terms = "  ".join(f"{k}={_fmt(v)}" for k, v in sample["terms"].items())
        console.print(
            f"[cyan]reward {sample['reward']:.3f}[/cyan]  {terms}  "
            f"tokens={sample['tokens']} finished={sample['finished']}"
            + (f"  {sample['tests']}" if sample.get("tests") else "")
        )
    if report.prompt_tokens:
        console.print(f"prompt tokens: {report.prompt_tokens}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if not report.warnings:
        console.print("[green]no warnings[/green]")


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def cmd_train(args: argparse.Namespace) -> None:
    config = _config(args)  # a config mistake is reported before the trainer is imported
    from r1lab.grpo.loop import train

    run_dir = train(config, resume=args.resume, progress=not args.quiet)
    console.print(f"[green]done[/green]: {run_dir}")
    _print_run_summary(run_dir)


def cmd_sft(args: argparse.Namespace) -> None:
    """Supervised fine-tuning (R1's cold start) from a `kind: sft` recipe."""
    from r1lab.sft.config import load_sft_config

    config = load_sft_config(args.config, args.set or [])  # config mistakes before the trainer
    from r1lab.core.runfiles import read_jsonl
    from r1lab.sft.loop import sft

    run_dir = sft(config, resume=args.resume, progress=not args.quiet)
    console.print(f"[green]done[/green]: {run_dir}")
    table = Table("step", "eval loss", "eval pass@1", "eval format")
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if any(key.startswith("eval/") for key in row):
            cells = (row.get(k) for k in ("eval/loss", "eval/pass@1", "eval/format"))
            table.add_row(str(row["step"]), *("-" if v is None else f"{v:.3f}" for v in cells))
    console.print(table)


def cmd_sample(args: argparse.Namespace) -> None:
    """Rejection sampling (R1's stage 3) from a `kind: sample` recipe."""
    from r1lab.sample.config import load_sample_config

    config = load_sample_config(args.config, args.set or [])  # config mistakes before the sampler
    from r1lab.sample.run import sample

    out = sample(config, resume=args.resume, progress=not args.quiet)
    console.print(f"[green]done[/green]: {out / 'data.jsonl'}")
    console.print(_sample_table(out / "report.json"))


def cmd_distill(args: argparse.Namespace) -> None:
    """Distillation: the teacher's rejection-sampled rows fine-tune the student by SFT."""
    from r1lab.distill import REPORT, TEACHER_DIR, distill, load_distill_config

    config = load_distill_config(args.config, args.set or [])  # the trainer is imported later
    out = distill(config, resume=args.resume, progress=not args.quiet)
    console.print(_sample_table(out / TEACHER_DIR / REPORT))
    console.print(f"[green]done[/green]: student model {out / 'student' / 'final'}")


def _sample_table(report_path: Path) -> Table:
    """A sampling report.json as a table: drawn, correct, each filter's drops, kept, mixed."""
    import json

    report = json.loads(report_path.read_text())
    table = Table("samples", "count")
    for key in ("prompts", "samples", "correct", "judged"):
        table.add_row(key, str(report[key]))
    for reason, count in report["dropped"].items():
        table.add_row(f"dropped: {reason}", str(count))
    for key in ("kept", "mixed", "rows"):
        table.add_row(key, str(report[key]))
    return table


def cmd_zero(args: argparse.Namespace) -> None:
    """R1-Zero on the built-in model: resumes or no-ops when the run already exists."""
    from r1lab.grpo.config import load_config
    from r1lab.grpo.loop import train
    from r1lab.train.plots import plot_run

    config = load_config(args.config or ZERO_RECIPE, args.set or [])
    run_dir = train(config, resume="auto", progress=not args.quiet)
    _print_run_summary(run_dir)
    for path in plot_run(run_dir):
        console.print(f"wrote {path}")


def _print_run_summary(run_dir: Path) -> None:
    from r1lab.core.runfiles import read_jsonl

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/pass@1" in r]
    if not rows:
        return
    table = Table("step", "eval pass@1", "eval format", "eval length")
    for row in rows:
        table.add_row(
            str(row["step"]),
            f"{row['eval/pass@1']:.3f}",
            f"{row['eval/format']:.3f}",
            f"{row['eval/length']:.1f}",
        )
    console.print(table)


def cmd_pipeline(args: argparse.Namespace) -> None:
    """The R1 stages chained from a `kind: pipeline` YAML, then every model evaluated."""
    from r1lab.pipeline.config import load_pipeline

    pipeline = load_pipeline(args.config, args.set or [])  # every recipe checked before running
    from r1lab.pipeline.report import score_table
    from r1lab.pipeline.run import run_pipeline

    done = run_pipeline(
        pipeline,
        progress=not args.quiet,
        only=args.only,
        rerun_from=args.rerun_from,
        log=lambda message: console.print(message, markup=False),
    )
    if done.report is None:
        console.print(f"[green]done[/green]: {pipeline.stage(args.only).out}")
        return
    console.print(score_table(pipeline, done.scores))
    console.print(f"wrote {done.report}")


def cmd_plot(args: argparse.Namespace) -> None:
    from r1lab.train.plots import plot_run

    for path in plot_run(Path(args.run)):
        console.print(f"wrote {path}")


def cmd_eval(args: argparse.Namespace) -> None:
    """One evaluation, a side-by-side comparison (--compare), or a run's curve (--run)."""
    if args.compare:
        _compare(args)
        return
    from r1lab.eval.protocol import Runtime

    given = {name: getattr(args, name) for name in _EVAL_SETTINGS}
    given["task_options"] = dict(_parse_kv(o) for o in args.option or [])
    runtime = Runtime(
        args.batch_size, args.dtype, args.compute_dtype, args.device, progress=not args.quiet
    )
    if args.run:
        if args.out or args.model:
            raise UserError("--run evaluates the run's own models into RUN/eval/<step>/")
        from r1lab.eval.curves import CURVE_PNG, curve_table, evaluate_run

        curve = evaluate_run(args.run, given, args.limit, runtime)
        console.print(curve_table(curve))
        console.print(f"wrote {Path(args.run) / 'eval' / CURVE_PNG} and .json")
        return
    if not args.task:
        raise UserError("--task is required, e.g. --task arith (list them with `r1lab tasks`)")
    from r1lab.core.models import DEFAULT_MODEL
    from r1lab.eval.report import summary_table
    from r1lab.eval.run import run_eval
    from r1lab.eval.store import make_settings

    fields = {key: value for key, value in given.items() if value is not None}
    settings, notes = make_settings(args.model or DEFAULT_MODEL, fields.pop("task"), **fields)
    summary = run_eval(settings, args.out, args.limit, runtime, notes)
    console.print(summary_table(summary))
    console.print(f"wrote {summary['out_dir']}/results.jsonl and summary.json")


# `r1lab eval` flags that are evaluation settings (`eval.store.EvalSettings` fields); a flag
# left unset (None) keeps the setting's default, or with --run the run's own value.
_EVAL_SETTINGS = (
    "task",
    "template",
    "shots",
    "shot_style",
    "k",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "greedy",
    "engine",
    "stop",
)


def _compare(args: argparse.Namespace) -> None:
    from r1lab.eval import report

    if args.run or args.task or args.model or args.out:
        raise UserError("--compare takes eval directories only (plus --plot-out)")
    summaries = [report.load_summary(d) for d in args.compare]
    labels = report.labels_for(args.compare)
    console.print(report.compare_table(summaries, labels))
    for note in report.compare_notes(summaries):
        console.print(f"[yellow]note:[/yellow] {note}")
    plot = Path(args.plot_out or Path(args.compare[0]).resolve().parent / "compare.png")
    console.print(f"wrote {report.plot_compare(summaries, labels, plot)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    add("models", cmd_models, "list built-in model specs and what is cached")
    p = add("tasks", cmd_tasks, "list tasks, or show examples of one")
    p.add_argument("name", nargs="?", help="task name or jsonl:PATH")
    p.add_argument("-n", type=int, default=3, help="examples to show")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="task option")
    p = add("preflight", cmd_preflight, "sample a few completions, score them, warn about traps")
    with_config(p)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--samples", type=int, default=4)

    def resumable(p: argparse.ArgumentParser, resume_help: str) -> None:
        """A recipe-running command: config, --set, --resume, --quiet."""
        with_config(p)
        p.add_argument("--resume", action="store_true", help=resume_help)
        p.add_argument("--quiet", action="store_true", help="no live progress display")

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
    p.add_argument("--quiet", action="store_true")
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
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p = add("plot", cmd_plot, "write PNG figures of a run (reward, accuracy, length, reflection)")
    p.add_argument("run", help="run directory, e.g. runs/r1_zero_arith")
    p = add("eval", cmd_eval, "pass@1 over k samples, cons@k, pass@k on a task's test split")
    p.add_argument("--model", help="model spec or checkpoint dir (default: the built-in model)")
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
    p.add_argument("--limit", type=int, help="evaluate the first N test problems")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default evals/<model>_<task>_...)")
    p.add_argument("--engine", default="prefix", help="rollout engine: prefix or hf")
    p.add_argument(
        "--batch-size", type=int, default=16, help="problems per engine call and results write"
    )
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--compute-dtype", default="float32", help="bfloat16: bf16 matmuls (faster on bf16 CPUs)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="compare eval directories")
    p.add_argument("--plot-out", help="PNG path for --compare (default next to the first DIR)")
    p.add_argument("--run", help="evaluate every checkpoint of a run directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as err:
        # soft_wrap: a message piped to a log file stays one line, greppable
        Console(stderr=True).print(Text("error: ", style="red") + Text(str(err)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print(
            "[yellow]interrupted[/yellow]; resume with --resume (a pipeline: run it again)"
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
