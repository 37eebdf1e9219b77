"""w17 end to end: SFT, preference pairs + reward model, PPO, then the RLHF policy judged against the SFT policy.

    python -m impl train w17 --profile cpu [--reuse-artifacts]

Each stage is a run directory of its own (`artifacts/w17/<stage>/<profile>/<config hash>-N/`), resumed from its
checkpoint when interrupted (SFT, PPO) and, with --reuse-artifacts, reused when complete:

    tokenizer/   the policy's vocabulary (words or BPE) when it is built from config (deterministic: always reused)
    sft/         model/ (the SFT policy), train_log.jsonl
    reward/      pairs.jsonl, model/ (the reward model), held-out pair accuracy, before and after training
    ppo/         model/ (the RLHF policy), value_head.pt, train_log.jsonl (reward, KL, losses per iteration)
    grpo/        model/ (TRL's GRPO policy, the comparison), train_log.jsonl
    (none)       answers.jsonl (test prompts, both policies' answers, judges' and reward scores), metrics.json

A stage's config holds everything it depends on, so changing the SFT settings retrains every later stage.
"""
from __future__ import annotations

import json
import time

import torch

from impl.core.artifacts import RunResult, Runs, environment, write_json
from impl.core.hf import device, load_tokenizer, resolve_model
from impl.w17_rlhf import ppo, reward, sft
from impl.w17_rlhf.data import labelled_rows, load_prompts, read_pairs, sample, split_pairs
from impl.w17_rlhf.judge import FluencyJudge, LexiconJudge, SentimentJudge, compare, verdicts, win_rate
from impl.w17_rlhf.policy import answer_logprobs, generate_texts, load_policy, train_tokenizer, train_word_tokenizer
from impl.w17_rlhf.spec import W17Spec


def policy_tokenizer(spec: W17Spec, runs: Runs):
    """The pretrained model's own tokenizer; for a policy built from config, a word-level vocabulary ("words:N") or
    a BPE ("bpe:N") trained on the training texts (its own run directory, reused), or a tokenizer directory."""
    ref = spec.policy.model or spec.policy.tokenizer
    if not ref.startswith(("bpe:", "words:")):
        tok = load_tokenizer(ref)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    vocab = int(ref.split(":", 1)[1])
    run_dir = runs.dir_for({"data": spec.data.model_dump(), "tokenizer": ref}, name="tokenizer")
    if (run_dir / "metrics.json").exists():
        return load_tokenizer(str(run_dir))
    from impl.core.corpora import in_val

    texts = [text for rid, text, _ in labelled_rows(spec.data)[0] if not in_val(rid, spec.data.val_fraction)]
    tok = (train_tokenizer if ref.startswith("bpe:") else train_word_tokenizer)(texts, vocab, run_dir)
    write_json(run_dir / "metrics.json", {"vocab_size": len(tok), "trained_on": f"{len(texts)} training texts"})
    return tok


def stages(spec: W17Spec, runs: Runs, progress: bool = False, shuffle_pairs: bool = False):
    """(prompts, sft, reward, ppo, grpo or None results): each stage reused when complete, resumed when
    interrupted (SFT and PPO from their checkpoints)."""
    pairs = read_pairs(resolve_model(spec.pairs.file)) if spec.pairs.file else None  # checked before anything is written
    base = {"data": spec.data.model_dump(), "policy": spec.policy.model_dump(), "prompt_tokens": spec.prompt_tokens,
            "answer_tokens": spec.answer_tokens, "sft": spec.sft.model_dump()}
    with runs.exclusive():
        tok = policy_tokenizer(spec, runs.reusing())
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


SABOTAGES = ("sft_at_0.5", "sft_at_0.7", "favourite_words")


class Judges:
    """The judges, loaded once: sentiment (the win rate, from the human labels the labeller never saw), fluency,
    and the lexicon's second opinion on sentiment."""

    def __init__(self, spec: W17Spec, prompts):
        self.sentiment = SentimentJudge.fitted(prompts.unlabelled, str(resolve_model(spec.judge.sentiment_encoder)))
        self.fluency = FluencyJudge(resolve_model(spec.judge.fluency_model), spec.judge.batch_size)
        self.lexicon = LexiconJudge()

    def lexicon_win_rate(self, prompts: list[str], contender: list[str], sft: list[str]) -> float:
        return win_rate(verdicts(self.lexicon.score(prompts, contender), self.lexicon.score(prompts, sft)))

    def against(self, prompts: list[str], contender: list[str], sft: list[str], sft_scores: tuple | None = None) -> dict:
        """The contender's answers against the SFT policy's (compare's dict, with each answer's scores)."""
        s_sft, f_sft = sft_scores or (self.sentiment.score(prompts, sft), self.fluency.score(prompts, sft))
        s_c, f_c = self.sentiment.score(prompts, contender), self.fluency.score(prompts, contender)
        return {**compare(contender, sft, s_c, s_sft, f_c, f_sft), "scores": (s_c, f_c, s_sft, f_sft)}


def judge_grpo(spec: W17Spec, g: RunResult, tok, heads, sft_model, t_sft, sft_scores, judges: Judges, rm, rm_tok) -> dict:
    """The comparison row: TRL's GRPO policy answering the same test prompts with the same seed, judged against
    the same SFT answers."""
    T = spec.ppo.temperature
    model, _ = load_policy(g.run_dir / "model")
    model.to(device()).eval()
    answers = generate_texts(model, tok, heads, spec.answer_tokens, T, spec.seed + 11)
    texts_p, texts = tok.batch_decode(heads), tok.batch_decode(answers)
    v = judges.against(texts_p, texts, t_sft, sft_scores)
    return {**{k: v[k] for k in ("win_rate", "wins", "losses", "ties", "sentiment_rlhf", "fluency_drop", "diversity",
                                 "repetition_rate_rlhf", "distinct_2_rlhf")},
            "lexicon_win_rate": judges.lexicon_win_rate(texts_p, texts, t_sft),
            "kl_to_reference": kl_to_reference(model, sft_model, heads, answers, T),
            "reward": sum(reward.score(rm, rm_tok, texts_p, texts)) / len(heads),
            "reward_curve": g.metrics["reward_curve"], "train_seconds": g.metrics["train_seconds"], "run": str(g.run_dir)}


def favourite_words_answers(words: list[str], n: int, answer_tokens: int, tok) -> list[str]:
    """The reward-gaming twin: every prompt answered with the labeller's favourite words, in turn, as many as fit
    the answer's tokens."""
    out = []
    for i in range(n):
        text, k = "", 0
        while len(tok(text + " " + words[(i + k) % len(words)])["input_ids"]) <= answer_tokens:
            text, k = text + " " + words[(i + k) % len(words)], k + 1
        out.append(text)
    return out


def run(spec: W17Spec, runs: Runs, progress: bool = False, shuffle_pairs: bool = False,
        sabotage: str | None = None) -> RunResult:
    """`shuffle_pairs` (the reward model's twin): the reward model trained with half its pairs' labels swapped (and
    PPO on that reward). `sabotage`, a contender judged in the PPO policy's place: the SFT policy sampled at 0.5 or
    0.7 (`sft_at_0.5`, `sft_at_0.7`: what temperature alone does), or a policy answering every prompt with the
    labeller's favourite words (`favourite_words`). The PPO twin is a profile with ppo.lr 0."""
    if sabotage is not None and sabotage not in SABOTAGES:
        raise ValueError(f"sabotage must be one of {SABOTAGES}; got {sabotage!r}")
    prompts, s, r, p, g = stages(spec, runs, progress, shuffle_pairs)
    config = {"spec": spec.model_dump(exclude={"targets"}), "shuffle_pairs": shuffle_pairs, "ppo_run": str(p.run_dir),
              "sabotage": sabotage}
    run_dir = runs.dir_for(config)
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    start = time.time()
    sft_model, tok = load_policy(s.run_dir / "model")
    sft_model.to(device()).eval()
    heads = sample(prompts.test, spec.test_prompts, spec.seed)
    T = spec.ppo.temperature
    # the same sampling seed for every policy: identical weights give identical answers (the lr-0 twin)
    ans_sft = generate_texts(sft_model, tok, heads, spec.answer_tokens, T, spec.seed + 11)
    texts_p, t_sft = tok.batch_decode(heads), tok.batch_decode(ans_sft)
    kl = None
    if sabotage is None:
        rlhf_model, _ = load_policy(p.run_dir / "model")
        rlhf_model.to(device()).eval()
        ans_rlhf = generate_texts(rlhf_model, tok, heads, spec.answer_tokens, T, spec.seed + 11)
        kl = kl_to_reference(rlhf_model, sft_model, heads, ans_rlhf, T)
        t_rlhf = tok.batch_decode(ans_rlhf)
    elif sabotage.startswith("sft_at_"):
        colder = float(sabotage.removeprefix("sft_at_"))
        t_rlhf = tok.batch_decode(generate_texts(sft_model, tok, heads, spec.answer_tokens, colder, spec.seed + 11))
    else:
        t_rlhf = favourite_words_answers(r.metrics["favourite_words"], len(heads), spec.answer_tokens, tok)
    rm, rm_tok = reward.load_reward_model(r.run_dir / "model")
    rm_sft, rm_rlhf = reward.score(rm, rm_tok, texts_p, t_sft), reward.score(rm, rm_tok, texts_p, t_rlhf)
    judges = Judges(spec, prompts)
    verdict = judges.against(texts_p, t_rlhf, t_sft)
    s_rlhf, f_rlhf, s_sft, f_sft = verdict.pop("scores")
    # the labels, seen by the judges: how often the judge finds the chosen answer of a held-out pair more positive,
    # and how often each judge agrees with the test side's human labels
    _, held = split_pairs([json.loads(x) for x in (r.run_dir / "pairs.jsonl").read_text().splitlines()],
                          spec.pairs.heldout_fraction)
    jc = judges.sentiment.score([x["prompt"] for x in held], [x["chosen"] for x in held])
    jr = judges.sentiment.score([x["prompt"] for x in held], [x["rejected"] for x in held])
    human = prompts.heldout
    lexicon_human = judges.lexicon.score(human.texts, [""] * len(human.texts))
    grpo_row = None if g is None or sabotage else judge_grpo(spec, g, tok, heads, sft_model, t_sft, (s_sft, f_sft),
                                                             judges, rm, rm_tok)
    with open(run_dir / "answers.jsonl", "w") as f:
        for i, pr in enumerate(texts_p):
            f.write(json.dumps({"prompt": pr, "sft": t_sft[i], "rlhf": t_rlhf[i], "sentiment_sft": s_sft[i],
                                "sentiment_rlhf": s_rlhf[i], "fluency_sft": f_sft[i], "fluency_rlhf": f_rlhf[i],
                                "reward_sft": rm_sft[i], "reward_rlhf": rm_rlhf[i],
                                "verdict": verdict["verdicts"][i]}, ensure_ascii=False) + "\n")
    n = len(heads)
    policy = spec.policy.model or (f"GPT2LMHeadModel from config ({spec.policy.scratch.n_layer} layers, "
                                   f"{spec.policy.scratch.n_embd} wide, {s.metrics['parameters'] / 1e6:.1f}M parameters, "
                                   f"tokenizer {spec.policy.tokenizer})")
    metrics = {
        **{k: v for k, v in verdict.items() if k != "verdicts"},
        **{k: r.metrics[k] for k in ("pair_accuracy", "train_pair_accuracy", "untrained_pair_accuracy",
                                     "sft_loglik_pair_accuracy", "heldout_pairs", "train_pairs", "labeller_accuracy",
                                     "labeller_texts", "labeller_checked_on", "favourite_words")},
        "kl_to_reference": kl, "reward_rlhf": sum(rm_rlhf) / n, "reward_sft": sum(rm_sft) / n,
        "reward_curve": p.metrics["reward_curve"], "kl_curve": p.metrics["kl_curve"],
        "judge_agrees_with_pairs": sum((a > b) + 0.5 * (a == b) for a, b in zip(jc, jr)) / len(jc),
        "judge_agrees_with_humans": judges.sentiment.accuracy(human), "judge_trained_on": judges.sentiment.trained_on,
        "lexicon_win_rate": judges.lexicon_win_rate(texts_p, t_rlhf, t_sft),
        "lexicon_agrees_with_humans": sum((x > 0) == (y == 1) for x, y in zip(lexicon_human, human.labels)) / len(human.labels),
        "judge": f"a logistic-regression probe on {spec.judge.sentiment_encoder}'s sentence embeddings, fit on "
                 f"{judges.sentiment.trained_on:,} human labels the labeller never saw: P(positive | prompt + answer), "
                 f"pointwise",
        "fluency_judge": spec.judge.fluency_model, "policy": policy, "sabotage": sabotage,
        "sft_seconds": s.metrics["train_seconds"], "reward_seconds": r.metrics["train_seconds"],
        "ppo_seconds": p.metrics["train_seconds"], "shuffle_pairs": shuffle_pairs, "ppo_lr": spec.ppo.lr,
        "runs": {"sft": str(s.run_dir), "reward": str(r.run_dir), "ppo": str(p.run_dir),
                 **({"grpo": str(g.run_dir)} if g is not None else {})},
        "data": f"{prompts.description}; {r.metrics['pairs']} preference pairs ({r.metrics['pairs_source']}); "
                f"{n} test prompts (seed {spec.seed} sample)",
        "examples": [{"prompt": texts_p[i], "sft": t_sft[i], "rlhf": t_rlhf[i], "sentiment_sft": round(s_sft[i], 3),
                      "sentiment_rlhf": round(s_rlhf[i], 3), "verdict": verdict["verdicts"][i]}
                     for i in range(min(n, spec.examples_in_report))],
        "sample_pairs": [{k: x[k] for k in ("prompt", "chosen", "rejected")} for x in held[:3]],
        "grpo": grpo_row, "eval_seconds": round(time.time() - start, 1), "environment": environment(),
    }
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
