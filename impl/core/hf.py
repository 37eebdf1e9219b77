"""Hugging Face pieces shared by the milestones that train with `Trainer`: where a model comes from, a checked
tokenizer load, TrainingArguments from a profile's train section, and the training log every run keeps.

A model reference in a profile is a hub id (`google-bert/bert-base-uncased`, on machines with a hub), a local
directory, or `fixture:NAME` (a model from fixtures/sources.yaml, cached by `python -m impl fetch NAME`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from impl.core.errors import MilestonesError
from impl.core.fixtures import fixture_path


class ModelLoadError(MilestonesError):
    pass


class TokenizerError(MilestonesError):
    pass


class HFTrainSpec(BaseModel):
    """A profile's `train:` section for a Trainer run."""
    model_config = ConfigDict(extra="forbid")
    steps: int | None = None  # optimizer steps; None: `epochs` passes over the training data
    epochs: float = 1.0
    batch_size: int  # sequences per optimizer step (per device x grad_accum)
    grad_accum: int = 1
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    scheduler: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    log_every: int = 10


def resolve_model(ref: str) -> str:
    if ref.startswith("fixture:"):
        return str(fixture_path(ref.split(":", 1)[1]))
    return ref


# a tokenizer directory needs one of these file sets
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"))


def load_tokenizer(ref: str):
    """AutoTokenizer for a model reference, with one clear error for a directory that lacks its files."""
    from transformers import AutoTokenizer

    path = Path(resolve_model(ref))
    if path.is_dir():
        if not (path / "tokenizer_config.json").exists() or \
                not any(all((path / f).exists() for f in group) for group in _TOKENIZER_FILES):
            found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise TokenizerError(f"{path} is not a complete tokenizer directory: it needs tokenizer_config.json "
                                 f"and one of tokenizer.json | vocab.txt | vocab.json+merges.txt; found {found}")
        return AutoTokenizer.from_pretrained(path)
    if path.exists() or ref.startswith(("/", ".")):
        raise TokenizerError(f"tokenizer {ref!r}: no such directory")
    try:
        return AutoTokenizer.from_pretrained(ref)
    except OSError as e:
        raise ModelLoadError(f"cannot load tokenizer {ref!r} from the hub ({e.__class__.__name__}); on a machine "
                             f"without a hub point the profile's model at a local directory or fixture:NAME") from None


def load_model(cls, ref: str, **kwargs):
    """`cls.from_pretrained(ref)` with one clear error when the weights are missing, corrupt or unreachable."""
    path = Path(resolve_model(ref))
    if (path.is_dir() or ref.startswith(("/", "."))) and not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: no model there (config.json missing)")
    try:
        return cls.from_pretrained(str(path) if path.is_dir() else ref, **kwargs)
    except Exception as e:  # OSError (absent, hub), RuntimeError (shapes), SafetensorError (a corrupt file), ...
        raise ModelLoadError(f"cannot load {cls.__name__} from {ref!r}: {str(e).strip().splitlines()[0][:300]}") from None


def device():
    """The one device a single-process milestone runs on: the first GPU, else the CPU."""
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def load_causal_lm(ref: str, quantization: str = "none", dtype=None, max_gpu_memory_gb: float | None = None):
    """A causal LM on `device()`: unquantised ("none") in `dtype`, or its linear layers quantised by bitsandbytes
    at load time, "int8" (LLM.int8()) or "nf4" (4-bit NormalFloat, double quantisation, `dtype` compute).
    `max_gpu_memory_gb` (unquantised only): what does not fit on the GPU stays in CPU memory and accelerate moves
    it in at each forward (a 7B in bf16 on a 12 GB card): slower, the same numbers."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = dtype or torch.float32
    dev = device()
    if quantization == "none" and max_gpu_memory_gb is not None:
        budget = {"cpu": "1024GiB", **({dev.index or 0: f"{max_gpu_memory_gb}GiB"} if dev.type == "cuda" else {})}
        return load_model(AutoModelForCausalLM, ref, dtype=dtype, device_map="auto", max_memory=budget)
    if quantization == "none":
        return load_model(AutoModelForCausalLM, ref, dtype=dtype).to(dev)
    if quantization == "int8":
        q = BitsAndBytesConfig(load_in_8bit=True)
    elif quantization == "nf4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    else:
        raise ValueError(f"quantization must be 'none', 'int8' or 'nf4'; got {quantization!r}")
    model = load_model(AutoModelForCausalLM, ref, dtype=dtype, quantization_config=q,
                       device_map={"": dev.index or 0} if dev.type == "cuda" else "cpu")
    if quantization == "nf4" and dev.type == "cpu":
        keep_4bit_weights_in_their_training_layout(model)
    return model


def keep_4bit_weights_in_their_training_layout(model) -> int:
    """bitsandbytes (0.50) repacks a 4-bit layer's weights at its first inference forward on CPUs with AVX512-BF16
    (and computes it in bf16 from then on); a training forward after that gets wrong gradients: QLoRA tuned after
    the "before" generation lost ROUGE-L instead of gaining it, and the fp32-compute protocol was not what ran.
    Keep every 4-bit layer on the plain kernel, as on CPUs without AVX512-BF16. Returns the layers changed."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def training_arguments(train: HFTrainSpec, out_dir: Path, progress: bool = True, cls=None, **overrides):
    """TrainingArguments (or `cls`, a subclass such as TRL's SFTConfig) from a profile's train section;
    `overrides` are further keyword arguments of `cls`."""
    import torch
    from transformers import TrainingArguments

    per_device = train.batch_size // train.grad_accum
    if per_device * train.grad_accum != train.batch_size:
        raise MilestonesError(f"train.batch_size {train.batch_size} is not a multiple of grad_accum {train.grad_accum}")
    args = dict(
        output_dir=str(out_dir), per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=train.grad_accum, learning_rate=train.lr, warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay, lr_scheduler_type=train.scheduler, seed=train.seed, data_seed=train.seed,
        max_steps=train.steps or -1, num_train_epochs=train.epochs, logging_steps=train.log_every,
        bf16=train.precision == "bf16", use_cpu=not torch.cuda.is_available(), report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=not progress, dataloader_num_workers=0,
    )
    args.update(overrides)
    return (cls or TrainingArguments)(**args)


def __getattr__(name: str):
    """`JsonlLog` is made on first use: transformers' trainer module (peft, bitsandbytes ...) takes seconds to
    import, and every process that only reads a profile (this module's HFTrainSpec) would pay for it."""
    if name != "JsonlLog":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        """Appends every Trainer log line (step, loss, learning rate) to `<run_dir>/train_log.jsonl`."""

        def __init__(self, path: Path):
            self.path, self.start = path, time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                row = {"step": state.global_step, "loss": logs["loss"], "lr": logs.get("learning_rate"),
                       "elapsed_s": round(time.time() - self.start, 2)}
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")

    JsonlLog.__qualname__ = "JsonlLog"
    globals()["JsonlLog"] = JsonlLog
    return JsonlLog
