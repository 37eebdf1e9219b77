"""Instruction-tune a causal LM with LoRA or QLoRA and score it with ROUGE-L before and after, same decoding.

    python -m impl train w07 --profile cpu      # both variants the profile names, with progress bars

LoRA: `peft` adapters on every linear layer of the model (or the profile's `target_modules`), the base frozen.
QLoRA: the same on a base quantised to 4-bit NF4 by bitsandbytes (`BitsAndBytesConfig`), prepared with
`prepare_model_for_kbit_training`. Training is TRL's `SFTTrainer` on prompt-completion chat examples: the
model's chat template builds both, and the loss covers the completion (the response) only.

A run leaves `adapter/` (adapter_model.safetensors + adapter_config.json), `merged/` (the adapter merged into the
full-precision base: a plain model directory any transformers user can load), the training log and metrics.json
with ROUGE-L before and after on the held-out examples and the examples themselves.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.distributed import peak_memory_mb, reset_peak_memory
from impl.core.hf import JsonlLog, device, load_causal_lm, load_tokenizer, training_arguments
from impl.core.metrics import load_metric
from impl.w07_lora.data import Example, load_splits
from impl.w07_lora.spec import W07Spec

# For base models without a chat template (Mistral-7B-v0.1, Llama-2-7b): ChatML, written as plain text
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer_for(spec: W07Spec):
    tok = load_tokenizer(spec.model)
    if tok.chat_template is None:
        tok.chat_template = CHATML
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@torch.no_grad()
def generate(model, tok, examples: list[Example], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decoding of each example's chat prompt, batched with left padding; the response text only."""
    model.eval()
    tok.padding_side = "left"
    out = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        prompts = [tok.apply_chat_template(e.prompt(), tokenize=False, add_generation_prompt=True) for e in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        out += [tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in ids]
    return out


def rouge_l(predictions: list[str], examples: list[Example]) -> tuple[float, list[float]]:
    r = load_metric("rouge").compute(predictions=predictions, references=[e.references for e in examples])
    return r["rougeL"], r["rougeL_per_example"]


def _train_dataset(examples: list[Example], tok, max_length: int):
    """Prompt-completion chat rows; an example longer than `max_length` tokens is dropped, never truncated (a cut
    response would teach the model to stop mid-sentence)."""
    from datasets import Dataset

    rows = [{"prompt": e.prompt(), "completion": e.completion()} for e in examples
            if chat_tokens(tok, e.prompt() + e.completion()) <= max_length]
    return Dataset.from_list(rows)


def chat_tokens(tok, messages: list[dict]) -> int:
    """How many tokens the chat template makes of `messages`. (transformers 5's `apply_chat_template(tokenize=True)`
    returns a BatchEncoding, whose len() is its number of keys, 2: counting that dropped nothing, ever.)"""
    return len(tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"])


def _prompt_logits(model, tok, example: Example) -> torch.Tensor:
    enc = tok(tok.apply_chat_template(example.prompt(), tokenize=False, add_generation_prompt=True),
              return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        return model(**enc).logits.float().cpu()


def run(spec: W07Spec, variant: str, run_dir: Path, progress: bool = False) -> RunResult:
    """Tune (unless `run_dir` holds a complete run) and score one variant: "lora" or "qlora"."""
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from trl import SFTConfig, SFTTrainer

    quantize = variant == "qlora"
    write_json(run_dir / "spec.json", spec.model_dump())
    splits = load_splits(spec.data)
    tok = tokenizer_for(spec)
    torch.manual_seed(spec.train.seed)
    dtype = torch.bfloat16 if spec.train.precision == "bf16" else torch.float32  # the training precision
    model = load_causal_lm(spec.model, "nf4" if quantize else "none", dtype)
    footprint = model.get_memory_footprint()
    t0 = time.perf_counter()
    before = generate(model, tok, splits.eval, **spec.generate.model_dump())
    generate_seconds = time.perf_counter() - t0
    rouge_before, per_before = rouge_l(before, splits.eval)

    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    lora = spec.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_ds = _train_dataset(splits.train, tok, spec.max_length)
    args = training_arguments(spec.train, run_dir / "trainer", progress, cls=SFTConfig, max_length=None,
                              completion_only_loss=True, packing=False,
                              gradient_checkpointing=spec.gradient_checkpointing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                         callbacks=[JsonlLog(run_dir / "train_log.jsonl")])
    if quantize:  # TRL casts a quantised model's adapters to bf16 (the QLoRA paper's choice); train them in the
        # profile's precision instead: on the cpu profile bf16 adapters lose the small fp32 updates (and run slowly)
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(dtype)
    reset_peak_memory(device())
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    peak_mb = peak_memory_mb(device())
    model.save_pretrained(str(run_dir / "adapter"))  # adapter_model.safetensors + adapter_config.json

    after = generate(model, tok, splits.eval, **spec.generate.model_dump())
    rouge_after, per_after = rouge_l(after, splits.eval)
    adapter_logits = _prompt_logits(model, tok, splits.eval[0])
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    # merged: the adapter folded into the full-precision base (for QLoRA too: the usual way to ship a QLoRA model)
    base = load_causal_lm(spec.model, "none", dtype)
    merged = PeftModel.from_pretrained(base, str(run_dir / "adapter")).merge_and_unload()
    merged.save_pretrained(str(run_dir / "merged"))
    tok.save_pretrained(str(run_dir / "merged"))
    merged_diff = (_prompt_logits(merged, tok, splits.eval[0]) - adapter_logits).abs().max().item()

    n = spec.examples_in_report
    metrics = {
        "variant": variant, "model": spec.model, "quantization": "4-bit NF4, double quantisation" if quantize else None,
        "rougeL_before": rouge_before, "rougeL_after": rouge_after, "rougeL_gain": rouge_after - rouge_before,
        "rougeL_per_example_before": per_before, "rougeL_per_example_after": per_after,
        "eval_examples": len(splits.eval), "train_examples": len(train_ds),
        "examples": [{"instruction": e.instruction, "input": e.input, "reference": e.references[0],
                      "before": b, "after": a} for e, b, a in list(zip(splits.eval, before, after))[:n]],
        "trainable_params": trainable, "base_memory_footprint_mb": footprint / 2**20,
        "train_seconds": train_seconds, "generate_seconds_before": generate_seconds, "peak_memory_mb": peak_mb,
        "adapter_bytes": (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size,
        "merged_vs_adapter_max_logit_diff": merged_diff, "data": splits.description,
        "decoding": f"greedy, max {spec.generate.max_new_tokens} new tokens, the model's chat template",
    }
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run complete
    return RunResult(run_dir, metrics)
