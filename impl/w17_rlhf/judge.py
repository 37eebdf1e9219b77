"""The judges: sentiment for the win rate, fluency and diversity for the gates beside it.

Win rate: a stand-in for the human raters, trained on human labels that nothing else here saw — the half of
the training side's sentiment labels the labeller never learns (data.py) — and of another family than the
labeller (a logistic regression on TF-IDF word n-grams, which sees only the words it was trained on): a
logistic-regression probe on a pretrained sentence encoder's embeddings (all-MiniLM-L6-v2 on the cpu profile,
sentence-transformers), which reads text through a transformer trained on a billion sentence pairs elsewhere.
Its accuracy on the test side's human labels is reported beside the labeller's.
It is gold-reward-model evaluation (Gao et al. 2022): the policy is optimised against a proxy (the reward model,
trained on pairs the labeller labelled) and judged by a model of the same preference it never touched. Each answer
is judged alone (pointwise: no order, no position bias; a pairwise judge would be run in both orders): P(positive
| prompt + answer). Against the SFT policy's answer to the same prompt, the more positive wins; equal scores tie.
Win rate = (wins + ties / 2) / prompts. A second opinion, not gated: VADER (Hutto & Gilbert 2014), a rule-based
sentiment lexicon trained on nothing here, its compound score, the same way.

Fluency: a pretrained LM's (SmolLM2-135M-Instruct on the cpu profile) mean per-token log-likelihood of an answer
given its prompt; the RLHF policy may lose at most a calibrated amount of it against the SFT policy. Diversity:
corpus distinct-2 of the RLHF answers as a fraction of the SFT answers'. A policy that repeats the reward's
favourite words wins on sentiment and fails both.
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


class SentimentClassifier:
    """P(positive | text) from human labels, a scikit-learn vectorizer + classifier: the labeller (reward.py) and the
    judge are two of these, of different families, fit on different halves of the labels."""

    def __init__(self, labelled, vectorizer, classifier):
        self.vectorizer = vectorizer
        self.classifier = classifier.fit(vectorizer.fit_transform(labelled.texts), labelled.labels)
        self.trained_on = len(labelled.texts)

    def positive(self, texts: list[str]) -> list[float]:
        return self.classifier.predict_proba(self.vectorizer.transform(texts))[:, 1].tolist()

    def accuracy(self, labelled) -> float:
        return float(self.classifier.score(self.vectorizer.transform(labelled.texts), labelled.labels))


_embeddings: dict[str, object] = {}


class SentenceEncoder:
    """A pretrained sentence encoder (sentence-transformers) as a scikit-learn featurizer: unit-length embeddings."""

    def __init__(self, ref: str, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.ref, self.batch_size = ref, batch_size
        self.model = SentenceTransformer(ref, device=str(device()))

    def transform(self, texts: list[str]):
        """Remembered in this process, as the fluency judge's scores are: the twins would otherwise embed the
        check's SFT answers, held-out sentences and pair answers again (~20 s of a CI worker each)."""
        import hashlib
        import json

        texts = list(texts)
        key = hashlib.sha256(json.dumps([self.ref, self.batch_size, texts]).encode()).hexdigest()
        if key not in _embeddings:
            _embeddings[key] = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                                 convert_to_numpy=True, show_progress_bar=False)
        return _embeddings[key].copy()

    fit_transform = transform  # nothing to fit: the encoder is frozen


_judges: dict[str, SentimentJudge] = {}


class SentimentJudge(SentimentClassifier):
    """P(positive | prompt + answer): a logistic-regression probe (scikit-learn's defaults) on a frozen sentence
    encoder's embeddings, fit on human labels."""

    def __init__(self, labelled, encoder: str):
        from sklearn.linear_model import LogisticRegression

        super().__init__(labelled, SentenceEncoder(encoder), LogisticRegression(max_iter=1000))

    @classmethod
    def fitted(cls, labelled, encoder: str) -> SentimentJudge:
        """One judge per labels and encoder in this process: the twins and the check they shadow share its fit."""
        import hashlib
        import json

        key = hashlib.sha256(json.dumps([encoder, labelled.texts, labelled.labels]).encode()).hexdigest()
        if key not in _judges:
            _judges[key] = cls(labelled, encoder)
        return _judges[key]

    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        return self.positive([p + a for p, a in zip(prompts, answers)])


class LexiconJudge:
    """The second opinion: VADER's compound score of prompt + answer, in [-1, 1]."""

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        return [self.analyzer.polarity_scores(p + a)["compound"] for p, a in zip(prompts, answers)]


_fluency_scores: dict[str, list[float]] = {}


class FluencyJudge:
    """A pretrained LM's mean per-token log-likelihood of an answer given its prompt."""

    def __init__(self, ref: str, batch_size: int = 32):
        from transformers import AutoModelForCausalLM

        self.ref, self.batch_size = ref, batch_size
        self.tok = load_tokenizer(ref)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = load_model(AutoModelForCausalLM, ref, dtype=torch.float32).to(device()).eval()

    @torch.no_grad()
    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean log p_judge(answer token | prompt, earlier answer tokens), in the judge's own tokens. Remembered in
        this process: the SFT policy's answers are judged once however many contenders face them."""
        import hashlib
        import json

        key = hashlib.sha256(json.dumps([self.ref, prompts, answers]).encode()).hexdigest()
        if key not in _fluency_scores:
            _fluency_scores[key] = self._score(prompts, answers)
        return list(_fluency_scores[key])

    def _score(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Texts batched by their length (less padding) and only the answers' positions through the LM head (a
        fifth of SmolLM2-135M's FLOPs, and its 49,152-word log-softmax, at every prompt and padding position before):
        the same numbers up to float rounding (bit for bit on CI's answers here), in 3/4 of the time."""
        texts = [p + a for p, a in zip(prompts, answers)]
        n_prompt = [len(ids) for ids in self.tok(list(prompts))["input_ids"]]
        length = [len(ids) for ids in self.tok(texts)["input_ids"]]
        order = sorted(range(len(texts)), key=length.__getitem__)
        body, head = self.model.base_model, self.model.get_output_embeddings()
        out = [float("-inf")] * len(texts)  # an answer of no tokens
        for i in range(0, len(order), self.batch_size):
            batch = order[i:i + self.batch_size]
            enc = self.tok([texts[j] for j in batch], return_tensors="pt", padding=True, padding_side="right")
            ids, mask = enc["input_ids"].to(device()), enc["attention_mask"].to(device())
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
            # position t predicts token t + 1: the answer's tokens n_prompt .. end - 1 from positions n_prompt - 1 ..
            spans = [(b, j, max(n_prompt[j], 1) - 1, int(mask[b].sum()) - 1) for b, j in enumerate(batch)]
            spans = [s for s in spans if s[3] > s[2]]
            if not spans:
                continue
            logp = torch.log_softmax(head(torch.cat([hidden[b, lo:hi] for b, _, lo, hi in spans])).float(), -1)
            targets = torch.cat([ids[b, lo + 1:hi + 1] for b, _, lo, hi in spans])
            token_logp = logp.gather(1, targets[:, None]).squeeze(1).split([hi - lo for _, _, lo, hi in spans])
            for (_, j, _, _), t in zip(spans, token_logp):
                out[j] = t.mean().item()
        return out


def verdicts(score_a: list[float], score_b: list[float]) -> list[int]:
    """Per prompt: 1 when answer a is judged more positive, -1 when b is, 0 a tie."""
    return [0 if abs(sa - sb) < 1e-9 else (1 if sa > sb else -1) for sa, sb in zip(score_a, score_b)]


def win_rate(ab: list[int]) -> float:
    """(wins + ties / 2) / prompts."""
    return (ab.count(1) + 0.5 * ab.count(0)) / len(ab)


def compare(answers_a: list[str], answers_b: list[str], sentiment_a: list[float], sentiment_b: list[float],
            fluency_a: list[float], fluency_b: list[float]) -> dict:
    """Policy a (RLHF, or a twin) against policy b (SFT) on the same prompts: the win rate of a, its fluency drop
    (b's mean per-token log-likelihood minus a's, nats) and its diversity (distinct-2 of a over b's)."""
    ab = verdicts(sentiment_a, sentiment_b)
    n = len(ab)
    wins, losses, ties = ab.count(1), ab.count(-1), ab.count(0)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    d2a, d2b = distinct_n(answers_a, 2), distinct_n(answers_b, 2)
    return {"win_rate": win_rate(ab), "wins": wins, "losses": losses, "ties": ties, "judged_prompts": n,
            "sentiment_rlhf": mean(sentiment_a), "sentiment_sft": mean(sentiment_b),
            "fluency_rlhf": mean(fluency_a), "fluency_sft": mean(fluency_b),
            "fluency_drop": mean(fluency_b) - mean(fluency_a),
            "diversity": d2a / d2b if d2b else 0.0,
            "repetition_rate_rlhf": sum(map(degenerate, answers_a)) / n,
            "repetition_rate_sft": sum(map(degenerate, answers_b)) / n,
            "distinct_1_rlhf": distinct_n(answers_a, 1), "distinct_1_sft": distinct_n(answers_b, 1),
            "distinct_2_rlhf": d2a, "distinct_2_sft": d2b, "verdicts": ab}
