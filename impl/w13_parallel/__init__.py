"""w13 — tensor and pipeline parallelism of the w01 GPT, each checked for parity against one process.

    from impl.w13_parallel.run import run, analysis_markdown
    tp = run(spec, runs, "tp")      # Megatron-style 2-way tensor parallelism (tp.py)
    pp = run(spec, runs, "pp")      # 2-stage pipeline with torch.distributed.pipelining (pp.py)
    print(analysis_markdown(tp, pp))
"""
