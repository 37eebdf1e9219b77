"""w07 — instruction-tune a causal LM with LoRA and QLoRA (peft, bitsandbytes, TRL's SFTTrainer), ROUGE-L on
held-out examples before and after.

    from impl.w07_lora.tune import run
    result = run(spec, "qlora", run_dir)     # adapter/, merged/, metrics.json (rougeL_before, rougeL_after)
"""
