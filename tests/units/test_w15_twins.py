"""w15's unit tests are sharp (for the unit a plausible wrong implementation fails its snapshot: the twins), and the
unit is bound to the library it stands for: on the same made-up log-likelihoods, w15.multiple_choice_scores gives
exactly lm-evaluation-harness's own multiple-choice metrics (ConfigurableTask.process_results, then the mean its
aggregation takes), computed by the installed lm_eval itself. (w15's run keeps scoring with the harness; the unit is
what its protocol check recomputes the accuracy with.)"""
import math

import pytest
import torch

from impl import units
from impl.units import check


def _ref(*args):
    return units.catalogue("w15")["multiple_choice_scores"](*args)


def argmin_instead_of_argmax(loglikelihoods, gold, lengths):  # the "lowest loss" read as the lowest log-likelihood
    return _ref([[-x for x in q] for q in loglikelihoods], gold, lengths)


def acc_norm_not_normalised(loglikelihoods, gold, lengths):
    acc, _ = _ref(loglikelihoods, gold, lengths)
    return acc, acc.clone()


def acc_norm_per_token(loglikelihoods, gold, lengths):
    """Normalised by a token count instead of the characters lm-eval divides by (tokens taken as ~4 characters:
    the unit is given character lengths, so the twin can only estimate the tokens)."""
    return _ref(loglikelihoods, gold, [[math.ceil(n / 4) for n in q] for q in lengths])


def acc_norm_counting_the_delimiter(loglikelihoods, gold, lengths):  # len(" " + choice): the space lm-eval leaves out
    return _ref(loglikelihoods, gold, [[n + 1 for n in q] for q in lengths])


def argmax_last_on_a_tie(loglikelihoods, gold, lengths):  # numpy's / torch's argmax take the first
    def pick(xs):
        return max(reversed(range(len(xs))), key=lambda i: xs[i])
    acc = [float(pick(q) == g) for q, g in zip(loglikelihoods, gold)]
    norm = [float(pick([x / n for x, n in zip(q, ns)]) == g) for q, g, ns in zip(loglikelihoods, gold, lengths)]
    return torch.tensor(acc, dtype=torch.float64), torch.tensor(norm, dtype=torch.float64)


TWINS = [
    ("multiple_choice_scores", argmin_instead_of_argmax),
    ("multiple_choice_scores", acc_norm_not_normalised),
    ("multiple_choice_scores", acc_norm_per_token),
    ("multiple_choice_scores", acc_norm_counting_the_delimiter),
    ("multiple_choice_scores", argmax_last_on_a_tie),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w15"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w15", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# --- bound to lm-evaluation-harness ----------------------------------------------------------------------------
# made-up questions: choices (non-ASCII ones make characters and UTF-8 bytes differ), gold index, and the summed
# log-likelihood of each choice's continuation
DOCS = [
    (["Paris", "the city of Lyon", "Marseille"], 1, [-3.0, -6.5, -7.0]),
    (["café", "tea", "water, still"], 0, [-4.1, -4.0, -9.0]),
    (["naïve résumé", "plain cv"], 0, [-11.0, -8.5]),
    (["a", "bb", "ccc", "dddd"], 3, [-1.0, -2.0, -3.0, -4.0]),  # ties after normalising: the first
    (["yes", "no"], 1, [-0.7, -0.7]),                            # a tie of the sums: the first
    (["über", "uber", "ueber"], 2, [-5.0, -4.2, -5.2]),
    (["ça va", "it goes well, thanks", "bien"], 1, [-6.0, -12.0, -5.9]),
    (["日本", "Japan", "Nippon"], 0, [-9.0, -7.0, -8.0]),
]


@pytest.fixture(scope="module")
def lm_eval_task():
    """A real lm-eval multiple-choice task over DOCS (its dataset in memory), scoring acc, acc_norm and acc_bytes."""
    datasets = pytest.importorskip("datasets")
    task_mod = pytest.importorskip("lm_eval.api.task")
    docs = [{"question": f"q{i}", "choices": c, "label": g} for i, (c, g, _) in enumerate(DOCS)]
    return task_mod.ConfigurableTask(config={
        "task": "llmm_unit_binding", "output_type": "multiple_choice", "test_split": "test",
        "custom_dataset": lambda **kw: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}),
        "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm", "acc_bytes")]})


def _lm_eval_scores(task):
    per_doc = [task.process_results(doc, [(ll, False) for ll in lls])
               for doc, (_, _, lls) in zip(task.test_docs(), DOCS)]
    agg = task.aggregation()
    return {m: ([d[m] for d in per_doc], agg[m]([d[m] for d in per_doc])) for m in ("acc", "acc_norm", "acc_bytes")}


def test_acc_and_acc_norm_are_lm_evals(lm_eval_task):
    """Lengths in characters (what lm-eval's acc_norm divides by): the unit's acc and acc_norm, per question and
    their means, equal lm-eval's exactly (both are 0/1 verdicts from an argmax over the same float64 numbers)."""
    theirs = _lm_eval_scores(lm_eval_task)
    acc, acc_norm = units.w15.multiple_choice_scores([lls for _, _, lls in DOCS], [g for _, g, _ in DOCS],
                                                     [[len(c) for c in choices] for choices, _, _ in DOCS])
    assert acc.tolist() == theirs["acc"][0] and acc.mean().item() == theirs["acc"][1]
    assert acc_norm.tolist() == theirs["acc_norm"][0] and acc_norm.mean().item() == theirs["acc_norm"][1]
    assert theirs["acc"][0] != theirs["acc_norm"][0]  # the inputs tell the two apart


def test_acc_norm_over_utf8_bytes_is_lm_evals_acc_bytes(lm_eval_task):
    theirs = _lm_eval_scores(lm_eval_task)
    _, acc_bytes = units.w15.multiple_choice_scores([lls for _, _, lls in DOCS], [g for _, g, _ in DOCS],
                                                    [[len(c.encode()) for c in choices] for choices, _, _ in DOCS])
    assert acc_bytes.tolist() == theirs["acc_bytes"][0]
    assert theirs["acc_bytes"][0] != theirs["acc_norm"][0]  # characters and bytes differ on these inputs


def test_normalising_by_token_count_is_not_lm_evals_acc_norm(lm_eval_task):
    """The protocol check's sabotage rule (mean log-probability per token) is not lm-eval's acc_norm: with token
    counts as the lengths (illustrative counts, as a BPE tokenizer might split " " + choice) the verdicts
    differ."""
    tokens = [[1, 4, 3], [2, 1, 4], [7, 2], [1, 1, 1, 2], [1, 1], [2, 2, 3], [3, 5, 1], [2, 1, 2]]
    theirs = _lm_eval_scores(lm_eval_task)
    _, per_token = units.w15.multiple_choice_scores([lls for _, _, lls in DOCS], [g for _, g, _ in DOCS], tokens)
    assert per_token.tolist() != theirs["acc_norm"][0]
