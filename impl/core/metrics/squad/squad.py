"""SQuAD v1.1 exact match and F1 (higher is better), with the official script's normalisation.

A local copy of the hub's `evaluate` squad metric: an answer and each gold answer are lower-cased, stripped of
punctuation and of the articles a/an/the, and their whitespace collapsed; EM is 1 when they are equal, F1 is the
harmonic mean of token precision and recall; an example scores its best gold answer; results are means x 100.
Inputs are plain strings (not the hub metric's nested SQuAD dicts)."""
import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = "SQuAD v1.1 exact match and token F1, x100, best gold answer per example; higher is better."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the predicted answers.
    references (list of list of str): the gold answers of each question (one or more).
Returns:
    exact_match (float), f1 (float): means over examples, in [0, 100].
    exact_match_per_example, f1_per_example (list of float): each example's best score, in [0, 1].
"""
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s):
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold):
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Rajpurkar et al. (2016). SQuAD: 100,000+ Questions for Machine Comprehension of Text.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references):
        em = [max(exact_match(p, g) for g in refs) for p, refs in zip(predictions, references)]
        f = [max(f1(p, g) for g in refs) for p, refs in zip(predictions, references)]
        n = max(len(em), 1)
        return {"exact_match": 100 * sum(em) / n, "f1": 100 * sum(f) / n,
                "exact_match_per_example": em, "f1_per_example": f}
