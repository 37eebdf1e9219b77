"""ROUGE-L: the longest common subsequence F-measure between a prediction and its references (higher is better).

A local copy of the hub's `evaluate` rouge metric (rougeL, the sentence-level LCS; not rougeLsum), computing with
Google's `rouge_score`: tokens are lower-cased alphanumeric runs, Porter-stemmed; with several references an
example scores its best one; the result is the mean over examples."""
import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L F1 (longest common subsequence), mean over examples, best reference each; higher is better."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts.
    references (list of list of str): one or more reference texts per prediction.
    use_stemmer (bool): Porter stemming before matching (default True).
Returns:
    rougeL (float): in [0, 1], the mean of each example's best F-measure.
    rougeL_per_example (list of float): each example's score.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, C.-Y. (2004). ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [scorer.score_multi(refs, pred)["rougeL"].fmeasure for pred, refs in zip(predictions, references)]
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0, "rougeL_per_example": scores}
