"""Stage 3: PPO against the reward model, written out as the algorithm (TRL 1.x has no PPOTrainer).

    python -m impl train w17 --profile cpu

Per iteration (Ouyang et al. 2022; Ziegler et al. 2019; the "N implementation details of RLHF with PPO"):

1. Rollout: `batch_size` training prompts, an answer sampled from the policy at `temperature`.
2. Score: the reward model's scalar for each prompt + answer, whitened over the batch (mean 0, std 1), so the
   KL penalty's scale means the same whatever the reward model's scale.
3. Per-token rewards: -kl_coef * (log pi(a_t) - log pi_ref(a_t)) at every answer token (pi_ref: the frozen SFT
   policy), plus the whitened score at the last token (the unit w17.kl_reward).
4. GAE: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}; returns = A + V; advantages
   whitened over the batch (w17.gae). V comes from a value head (a linear layer on the policy's last hidden state).
5. `epochs` passes of minibatches: the clipped policy objective max(-A r, -A clip(r, 1-eps, 1+eps)) with
   r = pi / pi_old (w17.ppo_policy_loss), plus vf_coef times the clipped value loss (w17.clipped_value_loss).

The four units are impl/w17_rlhf/units.py, reached through `impl.units.w17` (a learner's, when selected).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

from impl.core.artifacts import RunResult, environment, write_json
from impl.core.hf import device
from impl.units import w17
from impl.w17_rlhf.policy import answer_logprobs, load_policy, never_sampled, sample
from impl.w17_rlhf.reward import load_reward_model, score

CHECKPOINT_EVERY = 10


class PolicyWithValue(nn.Module):
    """The causal LM and a value head reading its last hidden state at each position."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, sequences: torch.Tensor, n_answer: int):
        """(logits over the whole sequence, values V_t of each answer step: (B, n_answer)). The value of step t
        is read where the answer token t is predicted, as its log-probability is."""
        out = self.lm(sequences, output_hidden_states=True)
        h = out.hidden_states[-1][:, -n_answer - 1:-1]
        return out.logits, self.value_head(h.float()).squeeze(-1)


def whiten(x: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean, var = x.mean(), x.var(unbiased=False)
    w = (x - mean) * torch.rsqrt(var + 1e-8)
    return w if shift_mean else w + mean


def ppo_losses(new_logp, old_logp, adv, values, old_values, returns, clip: float, clip_value: float):
    """(policy loss, value loss, fraction of ratios clipped, approximate KL(old || new)): the losses are the units
    w17.ppo_policy_loss and w17.clipped_value_loss, the other two are logged statistics."""
    pg = w17.ppo_policy_loss(new_logp, old_logp, adv, clip)
    vf = w17.clipped_value_loss(values, old_values, returns, clip_value)
    ratio = torch.exp(new_logp - old_logp)
    clipfrac = ((ratio - 1).abs() > clip).float().mean()
    approx_kl = 0.5 * ((new_logp - old_logp) ** 2).mean()
    return pg, vf, clipfrac, approx_kl


def run(spec, prompts, sft_dir: Path, reward_dir: Path, run_dir: Path, progress: bool = False) -> RunResult:
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    p, R = spec.ppo, spec.answer_tokens
    dev = device()
    lm, tok = load_policy(sft_dir)
    ref, _ = load_policy(sft_dir)  # the frozen reference
    ref.to(dev).eval().requires_grad_(False)
    rm, rm_tok = load_reward_model(reward_dir)
    rm.requires_grad_(False)
    torch.manual_seed(p.seed)
    policy = PolicyWithValue(lm).to(dev)
    opt = torch.optim.Adam(policy.parameters(), lr=p.lr, eps=1e-5)
    it, log, state = 0, [], None
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():  # resume an interrupted run
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        policy.load_state_dict(state["policy"])
        opt.load_state_dict(state["opt"])
        it, log = state["iteration"], state["log"]
    # the log as of the checkpoint (empty for a fresh start): rows an interrupted run wrote after its last
    # checkpoint belong to iterations that run again, so they are dropped rather than written a second time
    with open(run_dir / "train_log.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in log)
    heads = [ids[:spec.prompt_tokens] for ids in prompts.train]
    g = torch.Generator().manual_seed(p.seed * 7919 + it)
    rng = random.Random(p.seed * 104729 + it)
    if state is not None and "rng" in state:  # the sampling streams where the checkpoint left them: a resumed
        g.set_state(state["generator"].cpu())  # run draws what the uninterrupted run would have drawn
        rng.setstate(state["rng"])
    start = time.time()
    from tqdm.auto import tqdm

    for it in tqdm(range(it, p.iterations), initial=it, total=p.iterations, desc="PPO", disable=not progress):
        # 1-2. rollout and score
        batch = torch.tensor(rng.sample(heads, p.batch_size), device=dev)
        answers = sample(policy.lm, batch, R, p.temperature, g, never_sampled(tok))
        seq = torch.cat([batch, answers], dim=1)
        texts_p, texts_a = tok.batch_decode(batch), tok.batch_decode(answers)
        raw = torch.tensor(score(rm, rm_tok, texts_p, texts_a), device=dev)
        scores = whiten(raw) if p.whiten_rewards else raw
        with torch.no_grad():
            policy.eval()
            logits, old_values = policy(seq, R)
            old_logp = answer_logprobs(logits, seq, R, p.temperature)
            ref_logp = answer_logprobs(ref(seq).logits, seq, R, p.temperature)
        # 3. per-token rewards: KL penalty everywhere, the score at the end
        kl = old_logp - ref_logp  # logged below
        rewards = w17.kl_reward(scores, old_logp, ref_logp, p.kl_coef)
        # 4. advantages
        adv, returns = w17.gae(rewards, old_values, p.gamma, p.lam)
        adv = whiten(adv)
        # 5. PPO epochs over minibatches
        stats = []  # the policy stays in eval mode: dropout would make pi != pi_old at the first step
        for _ in range(p.epochs):
            order = torch.randperm(p.batch_size, generator=g).tolist()
            for i in range(0, p.batch_size, p.minibatch_size):
                mb = order[i:i + p.minibatch_size]
                logits, values = policy(seq[mb], R)
                new_logp = answer_logprobs(logits, seq[mb], R, p.temperature)
                pg, vf, clipfrac, approx_kl = ppo_losses(new_logp, old_logp[mb], adv[mb], values, old_values[mb],
                                                         returns[mb], p.clip, p.clip_value)
                loss = pg + p.vf_coef * vf
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), p.max_grad_norm)
                opt.step()
                stats.append((pg.item(), vf.item(), clipfrac.item(), approx_kl.item()))
        n = len(stats)
        log.append({"iteration": it + 1, "reward": round(raw.mean().item(), 4),
                    "kl": round(kl.sum(1).mean().item(), 4),  # per answer: sum over tokens of log pi - log pi_ref
                    "policy_loss": round(sum(s[0] for s in stats) / n, 4), "value_loss": round(sum(s[1] for s in stats) / n, 4),
                    "clipfrac": round(sum(s[2] for s in stats) / n, 4), "approx_kl": round(sum(s[3] for s in stats) / n, 5),
                    "elapsed_s": round(time.time() - start, 1)})
        with open(run_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps(log[-1]) + "\n")
        if (it + 1) % CHECKPOINT_EVERY == 0 and it + 1 < p.iterations:
            torch.save({"policy": policy.state_dict(), "opt": opt.state_dict(), "iteration": it + 1, "log": log,
                        "generator": g.get_state(), "rng": rng.getstate()}, ckpt)
    policy.lm.save_pretrained(run_dir / "model")
    tok.save_pretrained(run_dir / "model")
    torch.save(policy.value_head.state_dict(), run_dir / "value_head.pt")
    ckpt.unlink(missing_ok=True)
    k = max(1, len(log) // 5)
    metrics = {"iterations": p.iterations, "reward_curve": [row["reward"] for row in log],
               "kl_curve": [row["kl"] for row in log],
               "reward_first": sum(r["reward"] for r in log[:k]) / k, "reward_last": sum(r["reward"] for r in log[-k:]) / k,
               "model_dir": str(run_dir / "model"), "train_seconds": round(time.time() - start, 1),
               "environment": environment()}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
