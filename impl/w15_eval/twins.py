"""The sabotage twin of the margin check: a model that has no preference at all."""
from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("llm-milestones-equal-loglikelihoods")
class EqualLoglikelihoodLM(LM):
    """Every continuation gets log-likelihood 0: the harness's argmax takes the first choice, which (choices
    shuffled per item) is the correct one about 1 / (number of choices) of the time: chance."""

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(0.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return [0.0 for _ in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return ["" for _ in requests]
