"""w05 — train the w01 GPT with DeepSpeed ZeRO, and compare it with plain DDP.

    from impl.w05_deepspeed.run import train, compare, stage_table_markdown
    result = train(spec, runs)      # ZeRO (train.zero_stage) training run, validation perplexity, cost
    c = compare(spec, runs)         # DDP vs ZeRO-0/1/2/3: loss curves, bytes held per rank, tokens/s
"""
