"""w07 — with PEFT (LoRA) on one GPU, instruction-tune an open 7B model on the Alpaca data into a chat assistant,
using QLoRA (4-bit) when memory is short; held-out ROUGE-L > 0.25.

    pytest acceptance -m "w07 and cpu"    # SmolLM2-135M-Instruct on BIG-bench natural_instructions, LoRA and QLoRA
    pytest acceptance -m "w07 and gpu1"   # a 7B model on Alpaca with QLoRA, ROUGE-L > 0.25

Each check tunes one variant with TRL's SFTTrainer (loss on the response only, prompts through the chat
template), saves the adapter and the merged model, and scores the held-out examples with ROUGE-L before and after
with the same greedy decoding. The report shows the first examples: instruction, reference, before, after.
"""
import pytest

from impl import adapters


def _examples_markdown(m) -> str:
    lines = []
    for i, e in enumerate(m["examples"], 1):
        lines += [f"**{i}. {e['instruction']}**", "", f"> {e['input'][:400]}" if e["input"] else "",
                  f"- reference: {e['reference']}", f"- before: {e['before']}", f"- after: {e['after']}", ""]
    return "\n".join(lines)


def _check(scorecard, r):
    m = r.metrics
    scorecard.check(
        m["rougeL_after"], data=m["data"], curve=[(x["step"], x["loss"]) for x in r.train_log()],
        baselines={"before_tuning": m["rougeL_before"]}, model=m["model"], quantization=m["quantization"] or "none",
        eval_examples=m["eval_examples"], train_examples=m["train_examples"], decoding=m["decoding"],
        trainable_params=m["trainable_params"], base_memory_footprint_mb=m["base_memory_footprint_mb"],
        adapter_bytes=m["adapter_bytes"], merged_vs_adapter_max_logit_diff=m["merged_vs_adapter_max_logit_diff"],
        train_seconds=m["train_seconds"], peak_memory_mb=m["peak_memory_mb"],
        adapter=str(r.run_dir / "adapter"), merged_model=str(r.run_dir / "merged"), examples=_examples_markdown(m),
    )


@pytest.mark.check("w07", target="lora_rougeL")
def test_lora_instruction_tuning_raises_held_out_rouge_l(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):  # ROUGE-L on a few hundred examples moves with the seed
        _check(scorecard, adapters.w07_tune(seeded, runs, "lora"))


@pytest.mark.check("w07", target="qlora_rougeL")
def test_qlora_on_a_4bit_base_raises_held_out_rouge_l(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        _check(scorecard, adapters.w07_tune(seeded, runs, "qlora"))
