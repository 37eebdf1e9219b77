"""w15's cases: multiple-choice accuracy from made-up log-likelihoods, built so that each way of getting it wrong
changes at least one question's verdict."""
from __future__ import annotations

from impl.units.cases import case

# (summed log-likelihood per choice, the gold index, each choice's length in characters); what each item catches
QUESTIONS = [
    ([-4.0, -6.0, -9.0], 2, [4, 10, 20]),            # the sum prefers the short choice, the mean per character the long
    ([-2.0, -3.0], 0, [2, 3]),                       # a tie after normalising: the first choice
    ([-5.0, -5.0, -7.0], 1, [5, 6, 8]),              # a tie of the sums: the first choice (so acc is 0 here)
    ([-1.0, -2.9], 1, [1, 3]),                       # one more character (a counted delimiter) flips acc_norm
    ([-10.0, -3.0, -8.0, -12.0], 1, [30, 5, 12, 40]),  # acc right, acc_norm wrong
    ([-7.5, -6.0, -9.0, -6.5, -5.5], 4, [10, 10, 10, 10, 10]),  # equal lengths: both agree
    ([-4.0, -4.6], 0, [8, 9]),                       # per character: the first; per ~4-character token: the second
    ([-0.5, -3.0], 0, [7, 2]),                       # both right
]


@case("w15.multiple_choice_scores")
def _multiple_choice(fn):
    lls, gold, lengths = (list(x) for x in zip(*QUESTIONS))
    acc, acc_norm = fn([list(q) for q in lls], gold, [list(n) for n in lengths])
    return {"acc": acc, "acc_norm": acc_norm}
