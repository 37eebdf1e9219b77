"""Quantise a causal LM with bitsandbytes and measure what it costs: memory footprint, perplexity on held-out
text and ROUGE-L on held-out instructions, each against the unquantised model with the same protocol.

    python -m impl train w09 --profile cpu    # the w07 LoRA model: fp32, int8 and nf4, then the table

int8 is LLM.int8() (8-bit weights, fp16 outlier columns); nf4 is 4-bit NormalFloat with double quantisation (the
QLoRA format). Only the linear layers are quantised; the embeddings stay in the load precision, which is why a
small model with a large vocabulary shrinks less than 4x or 8x.

`round_to_nearest` is a plain per-row round-to-nearest quantiser at any bit width (w09's units
int8_absmax_quantize / int8_absmax_dequantize): at 2 bits it is the sabotage twin of the quality targets (a
quantiser too coarse for the model).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.corpora import DataError, hub_dataset, offline_splits
from impl.core.hf import device, load_causal_lm, load_tokenizer
from impl.units import w09
from impl.w07_lora.data import Example
from impl.w07_lora.tune import generate, rouge_l
from impl.w09_serve.spec import QuantizeSpec


@torch.no_grad()
def round_to_nearest(model, bits: int):
    """Quantise-dequantise every linear weight in place, symmetric per output row, to `bits` bits: w09's units
    int8_absmax_quantize / int8_absmax_dequantize (2^(bits-1) - 1 levels a side)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            q, scale = w09.int8_absmax_quantize(module.weight, bits)
            module.weight.copy_(w09.int8_absmax_dequantize(q, scale))
    return model


def held_out_text(data) -> tuple[list[str], str]:
    if data.source == "offline":
        s = offline_splits(data.corpus, data.val_fraction)
        return s.val, f"the validation documents of {s.description}"
    dsd, where = hub_dataset(data.hub_path, data.hub_name, data.local_dir, (data.split,))
    ds = dsd[data.split]
    if data.text_column not in ds.column_names:
        raise DataError(f"{where}: no column {data.text_column!r} (has {ds.column_names})")
    # WikiText's convention: the raw lines joined back into one text (as the GPTQ and AWQ evaluations do)
    return ["".join(ds[data.text_column])], f"{where}, {data.hub_name or ''} {data.split} split"


def ppl_windows(tok, texts: list[str], spec: QuantizeSpec) -> list[list[int]]:
    from impl.w03_finetune.clm import blocks, token_stream

    windows = blocks(token_stream(tok, texts, spec.ppl_tokens), spec.ppl_window)
    if not windows:
        raise DataError(f"fewer than {spec.ppl_window} held-out tokens for perplexity")
    return windows


def score(model, tok, windows: list[list[int]], examples: list[Example], spec: QuantizeSpec) -> dict:
    """Perplexity over the windows and greedy ROUGE-L on the examples: the same protocol for every variant."""
    from impl.w03_finetune.clm import perplexity

    t0 = time.perf_counter()
    ppl = perplexity(model, windows)
    ppl_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = generate(model, tok, examples, spec.max_new_tokens, spec.batch_size)
    rouge, _ = rouge_l(answers, examples)
    return {"ppl": ppl, "rougeL": rouge, "memory_footprint_mb": model.get_memory_footprint() / 2**20,
            "ppl_seconds": ppl_s, "generate_seconds": time.perf_counter() - t0, "answers": answers}


def run(model_dir: str, spec: QuantizeSpec, examples: list[Example], run_dir: Path, examples_data: str,
        sabotage_bits: int | None = None) -> RunResult:
    """Unquantised, then each variant; `sabotage_bits` replaces every variant with a round-to-nearest model of
    that many bits (the twin)."""
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    tok = load_tokenizer(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts, text_description = held_out_text(spec.ppl_data)
    windows = ppl_windows(tok, texts, spec)
    examples = examples[:spec.rouge_examples]
    dtype = torch.bfloat16 if device().type == "cuda" else torch.float32
    results = {}
    for variant in ["none", *spec.variants]:
        offload = spec.unquantised_max_gpu_memory_gb
        if sabotage_bits and variant != "none":
            model = round_to_nearest(load_causal_lm(model_dir, "none", dtype, offload), sabotage_bits)
        else:
            model = load_causal_lm(model_dir, variant, dtype, offload if variant == "none" else None)
        results[variant] = score(model, tok, windows, examples, spec)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    base = results["none"]
    for r in results.values():
        r["ppl_ratio"] = r["ppl"] / base["ppl"]
        r["memory_ratio"] = r["memory_footprint_mb"] / base["memory_footprint_mb"]
        r["rougeL_change"] = r["rougeL"] - base["rougeL"]
    metrics = {
        "model": model_dir, "dtype": str(dtype).removeprefix("torch."), "variants": results,
        "ppl_data": f"{text_description}, first {len(windows) * spec.ppl_window} tokens in non-overlapping "
                    f"{spec.ppl_window}-token windows", "ppl_tokens": len(windows) * spec.ppl_window,
        "rouge_data": f"{examples_data}; first {len(examples)} held-out examples, greedy, max {spec.max_new_tokens} "
                      f"new tokens, chat template", "rouge_examples": len(examples),
        "sabotage_bits": sabotage_bits,
    }
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)


def table_markdown(metrics: dict) -> str:
    rows = ["| weights | memory MiB | x unquantised | ppl | x unquantised | ROUGE-L | change |", "|---|---|---|---|---|---|---|"]
    names = {"none": f"unquantised ({metrics['dtype']})", "int8": "int8 (LLM.int8)", "nf4": "4-bit NF4"}
    for v, r in metrics["variants"].items():
        rows.append(f"| {names.get(v, v)} | {r['memory_footprint_mb']:.1f} | {r['memory_ratio']:.3f} | {r['ppl']:.3f} "
                    f"| {r['ppl_ratio']:.4f} | {r['rougeL']:.4f} | {r['rougeL_change']:+.4f} |")
    rows += ["", f"Unquantised: the checkpoint as stored, in {metrics['dtype']}; the SmolLM2 fixture's weights were "
             "de-quantised from a Q4_1 GGUF and stored bf16, so for it they already carry 4-bit rounding "
             "(fixtures/README.md). Memory: get_memory_footprint(), without bitsandbytes' quantisation state."]
    return "\n".join(rows)
