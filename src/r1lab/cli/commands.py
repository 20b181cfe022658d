"""What each `r1lab` command does: read its arguments, call one function, show the result.

Everything shown goes through `core.console`: tables never cut a cell, progress is plain
lines off a terminal, and `--json` turns each result into JSON lines on stdout.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from r1lab.core import console
from r1lab.core.errors import UserError
from r1lab.train import dist
from r1lab.train.progress import eval_rows, eval_table

ZERO_RECIPE = "recipes/r1_zero_arith.yaml"


def _config(args: argparse.Namespace) -> object:
    from r1lab.grpo.config import load_config

    return load_config(args.config, args.set or [])


def cmd_models(args: argparse.Namespace) -> None:
    from r1lab.core.models import list_models

    rows = list_models()

    def render() -> object:
        table = console.table("spec", "description", "cache")
        for row in rows:
            table.add_row(row["spec"], row["description"], row["cache"])
        return table

    console.result(rows, render)


def cmd_tasks(args: argparse.Namespace) -> None:
    from r1lab.tasks import TASKS, make_task

    if not args.name:
        rows = [
            {"task": name, "description": (cls.__doc__ or "").strip().splitlines()[0]}
            for name, cls in sorted(TASKS.items())
        ]

        def render() -> object:
            table = console.table("task", "description")
            for row in rows:
                table.add_row(row["task"], row["description"])
            return table

        console.result(rows, render)
        if not console.MODE.json:
            console.say("show examples: r1lab tasks NAME [-n 3] [--option key=value]")
        return
    options = dict(_parse_kv(o) for o in args.option or [])
    task = make_task(args.name, options)
    examples = task.examples(args.split, limit=args.n)
    if not examples:
        from r1lab.core.advice import split_hint

        hint = f" ({split_hint()})" if args.split == "test" else ""
        raise UserError(f"task {args.name!r} has no {args.split} examples with these options{hint}")
    console.result([asdict(ex) for ex in examples], lambda: None)
    if console.MODE.json:
        return
    for ex in examples:
        console.heading(ex.id)
        console.say(f"prompt: {ex.prompt}")
        console.say(f"answer: {ex.answer}")
        if ex.solution:
            console.say(f"solution: {ex.solution}")


def _parse_kv(text: str) -> tuple[str, object]:
    from r1lab.core.config import parse_value

    if "=" not in text:
        raise UserError(f"--option expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key, parse_value(value, f"--option {key}")


def cmd_preflight(args: argparse.Namespace) -> None:
    config = _config(args)
    from r1lab.grpo.preflight import preflight

    ranks = (args.nproc_per_node, args.nnodes) if args.nproc_per_node else None
    report = preflight(config, prompts=args.prompts, samples=args.samples, ranks=ranks)
    if console.MODE.json:
        for sample in report.samples:
            console.emit({k: v for k, v in sample.items() if k != "example"})
        console.emit({"prompt_tokens": report.prompt_tokens, "warnings": report.warnings})
        return
    if report.prompts:
        tokens = report.prompt_tokens[0]
        console.heading(f"prompt 1 of {len(report.prompts)} as the model sees it: {tokens} tokens")
        console.say(report.prompts[0])
    for sample in report.samples:
        console.heading(f"{sample['id']}  answer={sample['answer']}")
        console.say(sample["completion"])
        terms = "  ".join(f"{k}={_fmt(v)}" for k, v in sample["terms"].items())
        console.say(
            f"reward {sample['reward']:.3f}  {terms}  "
            f"tokens={sample['tokens']} finished={sample['finished']}"
            + (f"  {sample['tests']}" if sample.get("tests") else ""),
            style="cyan",
        )
    if report.prompt_tokens:
        console.say(f"prompt tokens: {report.prompt_tokens}")
    for warning in report.warnings:
        console.warn(warning)
    if not report.warnings:
        console.say("no warnings", style="green")


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _trained(run_dir: Path, keys: tuple[str, ...]) -> None:
    """A finished training run: its directory, then its evaluation rows."""
    if console.MODE.json:
        for row in eval_rows(run_dir):
            console.emit(row)
        console.emit({"run_dir": str(run_dir), "final": str(run_dir / "final")})
        return
    console.say(f"done: {run_dir}", style="green")
    console.show(eval_table(run_dir, keys))


def cmd_train(args: argparse.Namespace) -> None:
    config = _config(args)  # a config mistake is reported before the trainer is imported
    from r1lab.grpo.loop import train

    run_dir = train(config, resume=args.resume, progress=not args.quiet)
    _trained(run_dir, ("eval/pass@1", "eval/format", "eval/length"))


def cmd_sft(args: argparse.Namespace) -> None:
    """Supervised fine-tuning (R1's cold start) from a `kind: sft` recipe."""
    from r1lab.sft.config import load_sft_config

    config = load_sft_config(args.config, args.set or [])  # config mistakes before the trainer
    from r1lab.sft.loop import sft

    run_dir = sft(config, resume=args.resume, progress=not args.quiet)
    _trained(run_dir, ("eval/loss", "eval/pass@1", "eval/format"))


def _report(path: Path, done: str) -> None:
    """A rejection-sampling report.json: the counts as a table (or the report with --json)."""
    import json

    from r1lab.sample.run import report_table

    console.result([json.loads(path.read_text())], lambda: report_table(path))
    if not console.MODE.json:
        console.say(done, style="green")


def cmd_sample(args: argparse.Namespace) -> None:
    """Rejection sampling (R1's stage 3) from a `kind: sample` recipe."""
    from r1lab.sample.config import load_sample_config

    config = load_sample_config(args.config, args.set or [])  # config mistakes before the sampler
    from r1lab.sample.run import REPORT, sample

    out = sample(config, resume=args.resume, progress=not args.quiet)
    _report(out / REPORT, f"done: {out / 'data.jsonl'}")


def cmd_distill(args: argparse.Namespace) -> None:
    """Distillation: the teacher's rejection-sampled rows fine-tune the student by SFT."""
    from r1lab.distill import REPORT, TEACHER_DIR, distill, load_distill_config

    config = load_distill_config(args.config, args.set or [])  # the trainer is imported later
    out = distill(config, resume=args.resume, progress=not args.quiet)
    _report(out / TEACHER_DIR / REPORT, f"done: student model {out / 'final'}")


def cmd_zero(args: argparse.Namespace) -> None:
    """R1-Zero on the built-in model: resumes or no-ops when the run already exists."""
    from r1lab.grpo.config import load_config
    from r1lab.grpo.loop import train
    from r1lab.train.plots import plot_run

    config = load_config(args.config or ZERO_RECIPE, args.set or [])
    run_dir = train(config, resume="auto", progress=not args.quiet)
    _trained(run_dir, ("eval/pass@1", "eval/format", "eval/length"))
    _wrote(dist.on_main(plot_run, run_dir))  # under torchrun: rank 0 draws


def _wrote(paths: list[Path]) -> None:
    console.result([{"wrote": str(path)} for path in paths], lambda: None)
    if not console.MODE.json:
        for path in paths:
            console.say(f"wrote {path}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    """The R1 stages chained from a `kind: pipeline` YAML, then every model evaluated."""
    from r1lab.pipeline.config import load_pipeline

    pipeline = load_pipeline(args.config, args.set or [])  # every recipe checked before running
    from r1lab.pipeline.report import score_rows, score_table
    from r1lab.pipeline.run import run_pipeline

    done = run_pipeline(
        pipeline,
        progress=not args.quiet,
        only=args.only,
        rerun_from=args.rerun_from,
        log=console.log,
    )
    if done.report is None:
        out = pipeline.stage(args.only).out
        console.result([{"stage": args.only, "out": str(out)}], lambda: f"done: {out}")
        return
    console.result(score_rows(done.scores), lambda: score_table(pipeline, done.scores))
    _wrote([done.report])


def cmd_plot(args: argparse.Namespace) -> None:
    from r1lab.train.plots import plot_run

    _wrote(plot_run(Path(args.run)))


def cmd_eval(args: argparse.Namespace) -> None:
    """One evaluation, a side-by-side comparison (--compare), or a run's curve (--run)."""
    if args.compare:
        _compare(args)
        return
    from r1lab.core.models import DEFAULT_MODEL, check_spec
    from r1lab.eval.protocol import Runtime

    given = {name: getattr(args, name) for name in _EVAL_SETTINGS}
    given["task_options"] = dict(_parse_kv(o) for o in args.option or [])
    runtime = Runtime(
        args.batch_size,
        args.dtype,
        args.compute_dtype,
        args.device,
        progress=not args.quiet,
        concurrency=args.concurrency,
    )
    if args.run:
        if args.out or args.model:
            raise UserError("--run evaluates the run's own models into RUN/eval/<step>/")
        from r1lab.eval.curves import CURVE_PNG, curve_table, evaluate_run

        curve = evaluate_run(args.run, given, args.limit, runtime)
        console.result([curve], lambda: curve_table(curve))
        _wrote([Path(args.run) / "eval" / CURVE_PNG])
        return
    if not args.task:
        raise UserError("--task is required, e.g. --task arith (list them with `r1lab tasks`)")
    check_spec(args.model or DEFAULT_MODEL)  # a wrong path fails in a moment, writing nothing
    from r1lab.eval.report import summary_table
    from r1lab.eval.run import run_eval
    from r1lab.eval.store import make_settings

    fields = {key: value for key, value in given.items() if value is not None}
    settings, notes = make_settings(args.model or DEFAULT_MODEL, fields.pop("task"), **fields)
    summary = run_eval(settings, args.out, args.limit, runtime, notes)
    console.result([summary], lambda: summary_table(summary))
    if not console.MODE.json:
        console.say(f"wrote {summary['out_dir']}/results.jsonl and summary.json")


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
    "style",
    "special_token",
    "split",
)


def _compare(args: argparse.Namespace) -> None:
    from r1lab.core.advice import incomparable
    from r1lab.eval import report

    if args.run or args.task or args.model or args.out:
        raise UserError("--compare takes eval directories only (plus --plot-out)")
    summaries = [report.load_summary(d) for d in args.compare]
    labels = report.labels_for(args.compare)
    notes = report.compare_notes(summaries)
    plot = Path(args.plot_out or Path(args.compare[0]).resolve().parent / "compare.png")
    report.plot_compare(summaries, labels, plot)
    rows = [{"label": name, **summary} for name, summary in zip(labels, summaries, strict=True)]
    console.result(rows, lambda: report.compare_table(summaries, labels))
    if console.MODE.json:
        mismatches = incomparable(summaries)
        console.emit({"incomparable": mismatches, "notes": notes, "plot": str(plot)})
        return
    for note in notes:
        console.say(f"note: {note}", style="yellow")
    console.say(f"wrote {plot}")



def _serve_config(args: argparse.Namespace, **extra: object) -> object:
    from r1lab.serve.server import ServeConfig

    return ServeConfig(
        spec=args.model,
        template=args.template,
        prefill=args.prefill.replace("\\n", "\n"),  # `\n` typed in a shell is a newline
        style=args.style,
        special_token=args.special_token,
        engine=args.engine,
        dtype=args.dtype,
        compute_dtype=args.compute_dtype,
        device=args.device,
        threads=args.threads,
        **extra,
    )


def cmd_serve(args: argparse.Namespace) -> None:
    """An OpenAI-compatible server (FastAPI + uvicorn) of any model spec."""
    from r1lab.serve.protocol import ServeLimits
    from r1lab.serve.server import serve

    limits = ServeLimits(
        args.max_tokens,
        args.max_prompt_tokens,
        args.max_concurrent,
        args.max_n,
        args.max_body_bytes,
    )
    config = _serve_config(
        args,
        name=args.name,
        host=args.host,
        port=args.port,
        limits=limits,
        api_key_env=args.api_key_env,
        window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
    )
    config.validate()  # a bad flag is reported before the model loads
    serve(config, announce=lambda line: print(line, flush=True))


def cmd_chat(args: argparse.Namespace) -> None:
    """A terminal chat: the thinking dimmed (or hidden), the answer plain, many turns."""
    from r1lab.serve.chat import chat
    from r1lab.serve.protocol import Sampling

    sampling = Sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    chat(_serve_config(args), sampling, hide_thinking=args.hide_thinking, system=args.system)
