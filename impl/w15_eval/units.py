"""w15's unit, the reference implementation: how a multiple-choice benchmark turns the model's log-likelihoods into
accuracy, the number lm-evaluation-harness reports (its `acc` and `acc_norm`). The harness computes it inside
`lm_eval.simple_evaluate`; w15's protocol check (impl/w15_eval/run.py) recomputes the accuracy outside the harness
with this unit, through `impl.units.w15`, and tests/units/test_w15_twins.py binds it to the harness's own code.

Shapes: N questions; question i has K_i choices (K_i may differ between questions).
"""
from __future__ import annotations

import torch

from impl.units import unit


@unit(rtol=0.0, atol=0.0)
def multiple_choice_scores(loglikelihoods: list[list[float]], gold: list[int],
                           lengths: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiple-choice accuracy per question, as lm-evaluation-harness scores it. loglikelihoods[i][k]: the summed
    log-probability of choice k's continuation given question i's context; gold[i]: the index of the right
    choice; lengths[i][k]: choice k's length, by which acc_norm divides (lm-eval's acc_norm: the choice text's
    length in characters; its acc_bytes: in UTF-8 bytes). The prediction is the argmax (the first choice on a
    tie). Returns (acc, acc_norm), each (N,) float64 of 1.0 (right) or 0.0: acc from the argmax of the sums,
    acc_norm from the argmax of the sums divided by the lengths. Their means are the task's accuracies."""
    acc, acc_norm = [], []
    for lls, g, n in zip(loglikelihoods, gold, lengths, strict=True):
        lls = torch.tensor(lls, dtype=torch.float64)
        acc.append(1.0 if int(lls.argmax()) == g else 0.0)
        acc_norm.append(1.0 if int((lls / torch.tensor(n, dtype=torch.float64)).argmax()) == g else 0.0)
    return torch.tensor(acc, dtype=torch.float64), torch.tensor(acc_norm, dtype=torch.float64)
