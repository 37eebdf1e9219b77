"""The judge: a different, stronger model than anything trained here, pointwise.

Each answer is scored alone: the judge model's mean per-token log-likelihood of the answer given its prompt
(on the cpu profile SmolLM2-135M-Instruct, the `smollm2` fixture: its Q4_1 GGUF de-quantised to bf16 weights, so
they carry 4-bit rounding; its base model was pretrained on ~2T tokens, versus a few minutes of Austen for the
policies). The judge is pointwise: it never sees the two answers together, so position bias cannot arise and there
is no order to swap; a verdict compares two scores computed separately. (A pairwise judge, shown both answers in
one prompt, would have to be run in both orders.)

A likelihood judge rewards repetition ("the the the" is very likely), so an answer that repeats itself (a word
3-gram occurring twice, or fewer than `min_distinct` of its words distinct) is degenerate and loses to any
non-degenerate answer; two degenerate answers tie. Win rate = (wins + ties / 2) / prompts.
"""
from __future__ import annotations

import re

import torch

from impl.core.hf import device, load_model, load_tokenizer


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def degenerate(text: str, min_distinct: float = 0.5) -> bool:
    w = words(text)
    grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    return len(set(grams)) < len(grams) or (len(w) >= 4 and len(set(w)) / len(w) < min_distinct) or not w


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all n-grams of all answers (corpus-level distinct-n)."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


class Judge:
    def __init__(self, ref: str, batch_size: int = 32):
        from transformers import AutoModelForCausalLM

        self.ref, self.batch_size = ref, batch_size
        self.tok = load_tokenizer(ref)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = load_model(AutoModelForCausalLM, ref, dtype=torch.float32).to(device()).eval()

    @torch.no_grad()
    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean log p_judge(answer token | prompt, earlier answer tokens), in the judge's own tokens."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            ps, ans = prompts[i:i + self.batch_size], answers[i:i + self.batch_size]
            n_prompt = [len(self.tok(p)["input_ids"]) for p in ps]
            enc = self.tok([p + a for p, a in zip(ps, ans)], return_tensors="pt", padding=True, padding_side="right")
            ids, mask = enc["input_ids"].to(device()), enc["attention_mask"].to(device())
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            tok_logp = torch.gather(logp, 2, ids[:, 1:, None]).squeeze(-1)  # log p of token t+1
            for b, n in enumerate(n_prompt):
                end = int(mask[b].sum())
                span = tok_logp[b, max(n, 1) - 1:end - 1]
                out.append(span.mean().item() if span.numel() else float("-inf"))
        return out


def verdicts(score_a: list[float], score_b: list[float], degen_a: list[bool], degen_b: list[bool]) -> list[int]:
    """Per prompt: 1 when answer a wins, -1 when b wins, 0 a tie."""
    out = []
    for sa, sb, da, db in zip(score_a, score_b, degen_a, degen_b):
        if da or db:
            out.append(0 if da and db else (-1 if da else 1))
        elif abs(sa - sb) < 1e-6:
            out.append(0)
        else:
            out.append(1 if sa > sb else -1)
    return out


def compare(prompts: list[str], answers_a: list[str], answers_b: list[str], scores_a: list[float],
            scores_b: list[float], min_distinct: float) -> dict:
    """Policy a (RLHF) against policy b (SFT): win rate of a from the pointwise scores, with the repetition stats."""
    da = [degenerate(t, min_distinct) for t in answers_a]
    db = [degenerate(t, min_distinct) for t in answers_b]
    ab = verdicts(scores_a, scores_b, da, db)
    n = len(ab)
    wins, losses, ties = ab.count(1), ab.count(-1), ab.count(0)
    # the judged score: the judge's log-likelihood, a degenerate answer given the lowest score of any answer
    floor = min([s for s in scores_a + scores_b if s == s and s != float("-inf")] or [0.0])
    judged = lambda s, d: [floor if dd else ss for ss, dd in zip(s, d)]  # noqa: E731
    ja, jb = judged(scores_a, da), judged(scores_b, db)
    return {"win_rate": (wins + 0.5 * ties) / n,
            "wins": wins, "losses": losses, "ties": ties, "judged_prompts": n,
            "judged_score_rlhf": sum(ja) / n, "judged_score_sft": sum(jb) / n,
            "judge_loglik_rlhf": sum(scores_a) / n, "judge_loglik_sft": sum(scores_b) / n,
            "repetition_rate_rlhf": sum(da) / n, "repetition_rate_sft": sum(db) / n,
            "distinct_1_rlhf": distinct_n(answers_a, 1), "distinct_1_sft": distinct_n(answers_b, 1),
            "distinct_2_rlhf": distinct_n(answers_a, 2), "distinct_2_sft": distinct_n(answers_b, 2),
            "verdicts": ab, "degenerate_rlhf": da, "degenerate_sft": db}
