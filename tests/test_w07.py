"""w07's sabotage twins (an adapter trained at learning rate 0 is the untouched model: ROUGE-L gains exactly 0),
the gpu1 code path shrunk onto this CPU (Alpaca-format data, a base model without a chat template, QLoRA with
bf16 compute, gradient checkpointing), the data split, the local ROUGE-L metric and bad input."""
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.corpora import DataError
from impl.core.fixtures import fixture_path
from impl.core.metrics import load_metric
from impl.core.profiles import load_profile, override
from impl.w07_lora.data import load_splits

CPU = load_profile("cpu").milestone("w07")


@pytest.fixture
def runs(tmp_path):
    return Runs("w07", "test", root=tmp_path / "artifacts")


# --- sabotage twins: the cpu spec and targets, learning rate 0 ------------------------------------------------
def test_learning_rate_zero_fails_the_cpu_lora_target(runs):
    """Two steps stand for the whole run: at lr 0 the adapter's B matrices stay zero whatever the step count; and 8
    held-out examples for 24, since the outputs after tuning are those before it token for token on any of them."""
    spec = override(CPU, train={"lr": 0.0, "steps": 2}, data={"eval_examples": 8})
    m = adapters.w07_tune(spec, runs, "lora").metrics
    target = CPU.targets["lora_rougeL"]
    assert m["rougeL_after"] == m["rougeL_before"]  # the same greedy outputs, token for token
    assert not target.passes(target.checked_value(m["rougeL_after"], {"before_tuning": m["rougeL_before"]}))


def test_learning_rate_zero_fails_the_cpu_qlora_target_on_fewer_examples(runs):
    spec = override(CPU, train={"lr": 0.0, "steps": 2}, data={"eval_examples": 8})
    m = adapters.w07_tune(spec, runs, "qlora").metrics
    target = CPU.targets["qlora_rougeL"]
    assert m["quantization"].startswith("4-bit NF4") and m["rougeL_after"] == m["rougeL_before"]
    assert not target.passes(target.checked_value(m["rougeL_after"], {"before_tuning": m["rougeL_before"]}))


def test_a_4bit_model_keeps_its_training_layout_after_an_inference_forward():
    """bitsandbytes repacks 4-bit weights for inference on CPUs with AVX512-BF16, after which training gets wrong
    gradients (the lr-0 twin above saw the outputs move; QLoRA lost ROUGE-L). The loader keeps the plain layout:
    a QLoRA step after the "before" generation computes the same gradients as on a fresh model."""
    import torch

    from impl.core.hf import load_causal_lm, load_tokenizer

    tok = load_tokenizer("fixture:smollm2")
    enc = tok(["Name a fruit: apple, banana and"], return_tensors="pt")

    def input_grad(model):
        emb = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_()
        model.train()
        model(inputs_embeds=emb, labels=enc["input_ids"]).loss.backward()
        return emb.grad

    fresh = input_grad(load_causal_lm("fixture:smollm2", "nf4", torch.float32))
    used = load_causal_lm("fixture:smollm2", "nf4", torch.float32)
    used.eval()
    with torch.no_grad():
        used(**enc)  # what generating "before" does first
    assert not any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)
                   for m in used.modules() if hasattr(m, "weight"))
    assert torch.equal(input_grad(used), fresh)


# --- the gpu1 path, shrunk -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_model_without_chat_template(tmp_path_factory):
    """A 2-layer llama with SmolLM2's tokenizer minus its chat template, standing in for Mistral-7B-v0.1 (a
    base model: the ChatML fallback applies)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(fixture_path("smollm2"))
    tok.chat_template = None
    tok.save_pretrained(out)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
                     ).save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.mark.gpu_smoke
def test_gpu1_qlora_path_runs_here_shrunk(alpaca_like_dir, base_model_without_chat_template, runs):
    gpu1 = load_profile("gpu1").milestone("w07")
    assert gpu1.train.precision == "bf16" and gpu1.gradient_checkpointing and gpu1.data.source == "hub"
    spec = override(gpu1, model=str(base_model_without_chat_template),
                    data={"local_dir": str(alpaca_like_dir), "eval_examples": 4, "max_train_examples": 16, "val_fraction": 0.3},
                    train={"steps": 2, "batch_size": 4, "grad_accum": 2, "warmup_steps": 0},
                    generate={"max_new_tokens": 6, "batch_size": 4}, max_length=256)
    r = adapters.w07_tune(spec, runs, "qlora")
    m = r.metrics
    assert m["eval_examples"] == 4 and math.isfinite(m["rougeL_after"]) and m["train_examples"] > 0
    assert (r.run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (r.run_dir / "merged" / "config.json").exists()
    assert "<|im_start|>" in json.loads((r.run_dir / "merged" / "tokenizer_config.json").read_text()).get(
        "chat_template", "") or (r.run_dir / "merged" / "chat_template.jinja").exists()


# --- data, metric and bad input --------------------------------------------------------------------------------
def test_held_out_examples_are_fixed_and_never_trained_on():
    a, b = load_splits(CPU.data), load_splits(CPU.data)
    assert [e.id for e in a.eval] == [e.id for e in b.eval] and len(a.eval) == CPU.data.eval_examples
    assert not {e.id for e in a.eval} & {e.id for e in a.train}
    with open(fixture_path("alpaca-eval") / "instructions.jsonl") as f:
        rows = {r["id"]: r["dataset"] for r in map(json.loads, f)}
    assert len({rows[e.id] for e in a.eval}) > 1  # several AlpacaEval subsets in the held-out set


def test_examples_longer_than_max_length_are_dropped_not_truncated():
    from impl.w07_lora.data import Example
    from impl.w07_lora.tune import _train_dataset, chat_tokens, tokenizer_for

    tok = tokenizer_for(CPU)
    short = Example("a/1", "Name a fruit.", "", ["apple"])
    long = Example("a/2", "Summarise.", " ".join(["word"] * 300), ["a summary"])
    assert chat_tokens(tok, long.prompt() + long.completion()) > CPU.max_length > \
        chat_tokens(tok, short.prompt() + short.completion()) > 5
    kept = _train_dataset([short, long], tok, CPU.max_length)
    assert [r["completion"][0]["content"] for r in kept] == ["apple"]


def test_rouge_l_is_the_best_reference_lcs_f_measure():
    m = load_metric("rouge")
    r = m.compute(predictions=["the cat sat on the mat", "hello"], references=[["a cat sat on a mat", "dogs"], ["bye"]])
    assert r["rougeL_per_example"][0] == pytest.approx(2 * (4 / 6) * (4 / 6) / (4 / 6 + 4 / 6))
    assert r["rougeL_per_example"][1] == 0.0 and r["rougeL"] == pytest.approx(r["rougeL_per_example"][0] / 2)


@pytest.mark.parametrize("change, message", [
    ({"subsets": ["koala"], "max_output_chars": 20}, "fit the limits"),
    ({"max_output_chars": 1}, "fit the limits"),
    ({"eval_examples": 100000}, "eval_examples=100000"),
])
def test_bad_instruction_data_is_a_clear_error(change, message):
    with pytest.raises(DataError, match=message):
        load_splits(override(CPU, data=change).data)


def test_a_hub_format_directory_without_the_columns_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"prompt": ["x"], "response": ["y"]}), tmp_path / "train-00000-of-00001.parquet")
    gpu1 = load_profile("gpu1").milestone("w07")
    with pytest.raises(DataError, match=r"no column\(s\) \['instruction', 'input', 'output'\]"):
        load_splits(override(gpu1, data={"local_dir": str(tmp_path)}).data)


def test_an_unknown_variant_is_refused(runs):
    with pytest.raises(ValueError, match="'lora' or 'qlora'"):
        adapters.w07_tune(CPU, runs, "dora")
