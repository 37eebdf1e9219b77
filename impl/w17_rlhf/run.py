"""w17 end to end: SFT, preference pairs + reward model, PPO, then the RLHF policy judged against the SFT policy.

    python -m impl train w17 --profile cpu [--reuse-artifacts]

Each stage is a run directory of its own (`artifacts/w17/<stage>/<profile>/<config hash>-N/`), resumed from its
checkpoint when interrupted (SFT, PPO) and, with --reuse-artifacts, reused when complete:

    tokenizer/   the policy's BPE when it is built from config (deterministic: always reused)
    sft/         model/ (the SFT policy), train_log.jsonl
    reward/      pairs.jsonl, model/ (the reward model), held-out pair accuracy, before and after training
    ppo/         model/ (the RLHF policy), value_head.pt, train_log.jsonl (reward, KL, losses per iteration)
    grpo/        model/ (TRL's GRPO policy, the comparison), train_log.jsonl
    (none)       answers.jsonl (test prompts, both policies' answers, judge and reward scores), metrics.json

A stage's config holds everything it depends on, so changing the SFT settings retrains every later stage.
"""
from __future__ import annotations

import json
import time

import torch

from impl.core.artifacts import RunResult, Runs, environment, write_json
from impl.core.hf import device, load_tokenizer, resolve_model
from impl.w17_rlhf import ppo, reward, sft
from impl.core.corpora import in_val
from impl.core.fixtures import read_documents
from impl.w17_rlhf.data import load_prompts, read_pairs, sample, split_pairs
from impl.w17_rlhf.judge import Judge, compare
from impl.w17_rlhf.policy import answer_logprobs, generate_texts, load_policy, train_tokenizer
from impl.w17_rlhf.spec import W17Spec


def policy_tokenizer(spec: W17Spec, runs: Runs):
    """The pretrained model's own tokenizer; for a policy built from config, a BPE trained on the training
    chapters (its own run directory, reused) or a tokenizer directory."""
    ref = spec.policy.model or spec.policy.tokenizer
    if not ref.startswith("bpe:"):
        tok = load_tokenizer(ref)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    vocab = int(ref.split(":", 1)[1])
    run_dir = runs.dir_for({"data": spec.data.model_dump(), "tokenizer": ref}, name="tokenizer")
    if (run_dir / "metrics.json").exists():
        return load_tokenizer(str(run_dir))
    texts = [d["text"] for name in spec.data.corpus for d in read_documents(name)
             if not in_val(d["id"], spec.data.val_fraction)]
    tok = train_tokenizer(texts, vocab, run_dir)
    write_json(run_dir / "metrics.json", {"vocab_size": len(tok), "trained_on": f"{len(texts)} training documents"})
    return tok


def stages(spec: W17Spec, runs: Runs, progress: bool = False, shuffle_pairs: bool = False):
    """(prompts, sft, reward, ppo, grpo or None results): each stage reused when complete, resumed when
    interrupted (SFT and PPO from their checkpoints)."""
    pairs = read_pairs(resolve_model(spec.pairs.file)) if spec.pairs.file else None  # checked before anything is written
    base = {"data": spec.data.model_dump(), "policy": spec.policy.model_dump(), "prompt_tokens": spec.prompt_tokens,
            "answer_tokens": spec.answer_tokens, "sft": spec.sft.model_dump()}
    with runs.exclusive():
        tok = policy_tokenizer(spec, Runs(runs.milestone, runs.profile, reuse=True, root=runs.root))
        prompts = load_prompts(spec, tok)
        s = sft.run(spec, prompts, tok, runs.dir_for(base, name="sft"), progress)
        sft_dir = s.run_dir / "model"
        rcfg = {**base, "pairs": spec.pairs.model_dump(), "reward": spec.reward.model_dump(), "shuffle_pairs": shuffle_pairs,
                **({"pairs_content": pairs} if pairs is not None else {})}
        r = reward.run(spec, prompts, sft_dir, runs.dir_for(rcfg, name="reward"), pairs, shuffle_pairs, progress)
        p = ppo.run(spec, prompts, sft_dir, r.run_dir / "model",
                    runs.dir_for({**rcfg, "ppo": spec.ppo.model_dump()}, name="ppo"), progress)
        g = None
        if spec.grpo:
            from impl.w17_rlhf import grpo

            g = grpo.run(spec, prompts, sft_dir, r.run_dir / "model", runs.dir_for(
                {**rcfg, "grpo": spec.grpo.model_dump(), "temperature": spec.ppo.temperature}, name="grpo"), progress)
    return prompts, s, r, p, g


@torch.no_grad()
def kl_to_reference(policy, ref, prompt_ids: list[list[int]], answer_ids: list[list[int]], temperature: float) -> float:
    """Mean over test answers (sampled from `policy`) of sum_t log pi(a_t) - log pi_ref(a_t): an estimate of
    KL(pi || pi_ref) per answer, in nats."""
    seq = torch.tensor([p + a for p, a in zip(prompt_ids, answer_ids)], device=device())
    n = len(answer_ids[0])
    lp = answer_logprobs(policy(seq).logits, seq, n, temperature)
    lr = answer_logprobs(ref(seq).logits, seq, n, temperature)
    return (lp - lr).sum(1).mean().item()


def judge_grpo(spec: W17Spec, g: RunResult, tok, heads, sft_model, t_sft, j_sft, judge, rm, rm_tok) -> dict:
    """The comparison row: TRL's GRPO policy answering the same test prompts with the same seed, judged against
    the same SFT answers."""
    T = spec.ppo.temperature
    model, _ = load_policy(g.run_dir / "model")
    model.to(device()).eval()
    answers = generate_texts(model, tok, heads, spec.answer_tokens, T, spec.seed + 11)
    texts_p, texts = tok.batch_decode(heads), tok.batch_decode(answers)
    v = compare(texts_p, texts, t_sft, judge.score(texts_p, texts), j_sft, spec.judge.min_distinct)
    return {**{k: v[k] for k in ("win_rate", "wins", "losses", "ties", "judged_score_rlhf", "repetition_rate_rlhf",
                                 "distinct_1_rlhf", "distinct_2_rlhf")},
            "kl_to_reference": kl_to_reference(model, sft_model, heads, answers, T),
            "reward": sum(reward.score(rm, rm_tok, texts_p, texts)) / len(heads),
            "reward_curve": g.metrics["reward_curve"], "train_seconds": g.metrics["train_seconds"], "run": str(g.run_dir)}


def run(spec: W17Spec, runs: Runs, progress: bool = False, shuffle_pairs: bool = False) -> RunResult:
    """`shuffle_pairs` (the reward model's sabotage twin): the reward model trained with half its pairs' labels
    swapped (and PPO on that reward). The PPO twin is a profile with ppo.lr 0."""
    prompts, s, r, p, g = stages(spec, runs, progress, shuffle_pairs)
    config = {"spec": spec.model_dump(exclude={"targets"}), "shuffle_pairs": shuffle_pairs, "ppo_run": str(p.run_dir)}
    run_dir = runs.dir_for(config)
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    start = time.time()
    sft_model, tok = load_policy(s.run_dir / "model")
    rlhf_model, _ = load_policy(p.run_dir / "model")
    sft_model.to(device()).eval()
    rlhf_model.to(device()).eval()
    heads = sample(prompts.test, spec.test_prompts, spec.seed)
    T = spec.ppo.temperature
    # the same sampling seed for both policies: identical weights give identical answers (the lr-0 twin)
    ans_sft = generate_texts(sft_model, tok, heads, spec.answer_tokens, T, spec.seed + 11)
    ans_rlhf = generate_texts(rlhf_model, tok, heads, spec.answer_tokens, T, spec.seed + 11)
    kl = kl_to_reference(rlhf_model, sft_model, heads, ans_rlhf, T)
    texts_p = tok.batch_decode(heads)
    t_sft, t_rlhf = tok.batch_decode(ans_sft), tok.batch_decode(ans_rlhf)
    rm, rm_tok = reward.load_reward_model(r.run_dir / "model")
    rm_sft, rm_rlhf = reward.score(rm, rm_tok, texts_p, t_sft), reward.score(rm, rm_tok, texts_p, t_rlhf)
    judge = Judge(resolve_model(spec.judge.model), spec.judge.batch_size)
    j_sft, j_rlhf = judge.score(texts_p, t_sft), judge.score(texts_p, t_rlhf)
    verdict = compare(texts_p, t_rlhf, t_sft, j_rlhf, j_sft, spec.judge.min_distinct)
    # the chosen-rule's justification, measured: the judge on the held-out pairs' chosen and rejected answers
    _, held = split_pairs([json.loads(x) for x in (r.run_dir / "pairs.jsonl").read_text().splitlines()],
                          spec.pairs.heldout_fraction)
    held = held[:spec.test_prompts]
    grpo_row = None if g is None else judge_grpo(spec, g, tok, heads, sft_model, t_sft, j_sft, judge, rm, rm_tok)
    jc = judge.score([x["prompt"] for x in held], [x["chosen"] for x in held])
    jr = judge.score([x["prompt"] for x in held], [x["rejected"] for x in held])
    with open(run_dir / "answers.jsonl", "w") as f:
        for i, pr in enumerate(texts_p):
            f.write(json.dumps({"prompt": pr, "sft": t_sft[i], "rlhf": t_rlhf[i], "judge_sft": j_sft[i],
                                "judge_rlhf": j_rlhf[i], "reward_sft": rm_sft[i], "reward_rlhf": rm_rlhf[i],
                                "verdict": verdict["verdicts"][i]}, ensure_ascii=False) + "\n")
    n = len(heads)
    policy = spec.policy.model or (f"GPT2LMHeadModel from config ({spec.policy.scratch.n_layer} layers, "
                                   f"{spec.policy.scratch.n_embd} wide, {s.metrics['parameters'] / 1e6:.1f}M parameters, "
                                   f"tokenizer {spec.policy.tokenizer})")
    metrics = {
        **{k: v for k, v in verdict.items() if k not in ("verdicts", "degenerate_rlhf", "degenerate_sft")},
        "pair_accuracy": r.metrics["pair_accuracy"], "train_pair_accuracy": r.metrics["train_pair_accuracy"],
        "untrained_pair_accuracy": r.metrics["untrained_pair_accuracy"],
        "heldout_pairs": r.metrics["heldout_pairs"], "train_pairs": r.metrics["train_pairs"],
        "kl_to_reference": kl, "reward_rlhf": sum(rm_rlhf) / n, "reward_sft": sum(rm_sft) / n,
        "reward_curve": p.metrics["reward_curve"], "kl_curve": p.metrics["kl_curve"],
        "rule_judge_loglik_chosen": sum(jc) / len(jc), "rule_judge_loglik_rejected": sum(jr) / len(jr),
        "rule_judge_agreement": sum(a > b for a, b in zip(jc, jr)) / len(jc),
        "judge": spec.judge.model, "policy": policy, "sft_seconds": s.metrics["train_seconds"],
        "reward_seconds": r.metrics["train_seconds"], "ppo_seconds": p.metrics["train_seconds"],
        "shuffle_pairs": shuffle_pairs, "ppo_lr": spec.ppo.lr,
        "runs": {"sft": str(s.run_dir), "reward": str(r.run_dir), "ppo": str(p.run_dir),
                 **({"grpo": str(g.run_dir)} if g is not None else {})},
        "data": f"{prompts.description}; {r.metrics['pairs']} preference pairs ({r.metrics['pairs_source']}); "
                f"{n} test prompts from held-out chapters (seed {spec.seed} sample)",
        "examples": [{"prompt": texts_p[i], "sft": t_sft[i], "rlhf": t_rlhf[i], "judge_sft": round(j_sft[i], 3),
                      "judge_rlhf": round(j_rlhf[i], 3), "verdict": verdict["verdicts"][i]}
                     for i in range(min(n, spec.examples_in_report))],
        "sample_pairs": [{k: x[k] for k in ("prompt", "chosen", "rejected")} for x in held[:3]],
        "grpo": grpo_row, "eval_seconds": round(time.time() - start, 1), "environment": environment(),
    }
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
