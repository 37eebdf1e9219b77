"""The comparison row: TRL's GRPOTrainer on the same reward model, from the same SFT policy.

GRPO (Shao et al. 2024) drops PPO's value head: it samples `num_generations` answers per prompt and uses each
answer's reward minus its group's mean (over the group's std) as the advantage, with a KL penalty (beta) to the
reference. Here it answers the question the curriculum asks of PPO — does optimising the learned reward move the
judge? — with TRL's own implementation, so the hand-written PPO has a library run beside it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from impl.core.artifacts import RunResult, environment, write_json
from impl.w17_rlhf.data import sample
from impl.w17_rlhf.policy import load_policy
from impl.w17_rlhf.reward import load_reward_model, score


def run(spec, prompts, sft_dir: Path, reward_dir: Path, run_dir: Path, progress: bool = False) -> RunResult:
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    g = spec.grpo
    start = time.time()
    model, tok = load_policy(sft_dir)
    rm, rm_tok = load_reward_model(reward_dir)
    rm.requires_grad_(False)

    def reward_model(prompts, completions, **kwargs):
        return score(rm, rm_tok, prompts, completions)

    n_prompts = g.steps * g.batch_size // g.num_generations
    heads = [tok.decode(ids[:spec.prompt_tokens]) for ids in sample(prompts.train, n_prompts, g.seed)]
    on_gpu = torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(run_dir / "trainer"), per_device_train_batch_size=g.batch_size,
        num_generations=g.num_generations, max_completion_length=spec.answer_tokens,
        temperature=spec.ppo.temperature, top_k=0, top_p=1.0, beta=g.beta, learning_rate=g.lr, max_steps=g.steps,
        # TRL's defaults (bf16, gradient checkpointing) replaced by the profile's
        bf16=spec.precision == "bf16", gradient_checkpointing=spec.gradient_checkpointing, use_cpu=not on_gpu,
        report_to="none", logging_steps=1,
        save_strategy="no", seed=g.seed, data_seed=g.seed, disable_tqdm=not progress, dataloader_num_workers=0,
        log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_model, args=args, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": heads}))
    trainer.train()
    trainer.model.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    curve = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    with open(run_dir / "train_log.jsonl", "w") as f:
        for row in trainer.state.log_history:
            f.write(json.dumps(row) + "\n")
    metrics = {"steps": g.steps, "reward_curve": curve, "model_dir": str(run_dir / "model"),
               "train_seconds": round(time.time() - start, 1), "environment": environment()}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
