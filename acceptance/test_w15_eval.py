"""w15 — with lm-evaluation-harness, evaluate 3 open LLMs on at least 5 benchmarks (MMLU, HellaSwag, ARC, TruthfulQA,
GSM8K) and write a comparison report of per-task scores and averages.

    pytest acceptance -m "w15 and cpu"    # SmolLM2, w07's tuned SmolLM2, the w01 GPT x 5 BIG-bench tasks
    pytest acceptance -m "w15 and gpu1"   # 3 open 7B models x the Open LLM Leaderboard v1 tasks and n-shots

One run per profile: every model through `lm_eval.simple_evaluate` on every task (local YAML tasks over the
BIG-bench fixture on cpu, lm-eval's own tasks on gpu1), the raw harness JSON kept per model, a Markdown table
(task, n-shot, metric, value ± stderr per model, averages) and a grouped bar chart in the scorecard. The checks:
the pretrained model is measurably above chance (cpu) or lands on its published leaderboard scores (gpu1); the
report has every model x task cell with its stderr; one task's items scored again outside the harness get the
harness's predictions (item by item, not only the same accuracy).
"""
import pytest

from impl import adapters
from impl.w15_eval.run import bars

_results: dict[str, object] = {}


def _evaluate(spec, profile, runs):
    """One evaluation per spec in this process, read by every check."""
    key = spec.model_dump_json()
    if key not in _results:
        _results[key] = adapters.w15_evaluate(spec, profile, runs)
    return _results[key]


def _context(r) -> dict:
    m = r.metrics
    return {"harness": m["harness"], "limit": m["limit"], "batch_size": m["batch_size"], "dtype": m["dtype"],
            "n-shot": {t["name"]: t["num_fewshot"] for t in m["tasks"]}, "averages": m["averages"],
            "report": m["report"], "scores by model": bars(m), "raw harness JSON": str(r.run_dir / "results"),
            "model_seconds": m["model_seconds"]}


def _data(m) -> str:
    names = ", ".join(t["name"] for t in m["tasks"])
    limit = f"first {m['limit']} items of each (seeded sample)" if m["limit"] else "every item"
    source = f" from the {m['data_source']}" if m.get("data_source") else ""
    return f"{len(m['tasks'])} tasks ({names}){source}, {limit}; models: {', '.join(m['models'])}"


@pytest.mark.check("w15", target="avg_acc_margin")
def test_pretrained_model_scores_above_chance_on_average(spec, profile, runs, scorecard):
    r = _evaluate(spec, profile, runs)
    m = r.metrics
    control = spec.control
    scorecard.check(
        m["averages"][spec.pretrained], data=_data(m), baselines={"chance": m["avg_chance"]},
        trivial={"equal log-likelihoods (chance)": m["avg_chance"]}, pretrained=spec.pretrained,
        chance_per_task={t: c["chance"] for t, c in m["chance"].items()},
        **({f"control {control} average": m["averages"][control]} if control else {}),
        headline={f"{model} average": m["averages"][model] for model in m["models"]}, **_context(r))


@pytest.mark.check("w15", target="report_cells_missing")
def test_report_has_every_model_and_task_with_its_stderr(spec, profile, runs, scorecard):
    r = _evaluate(spec, profile, runs)
    m = r.metrics
    scorecard.check(len(m["cells_missing"]), data=_data(m), missing="; ".join(m["cells_missing"]) or "none",
                    report_file=str(r.run_dir / "report.md"), **_context(r))
    assert set(m["scores"]) == set(spec.models), "every model of the profile is in the report"
    if spec.control:  # the from-scratch control is reported like the others
        assert m["averages"][spec.control] is not None


@pytest.mark.check("w15", target="protocol_items_differing")
def test_recomputed_scoring_predicts_every_item_as_the_harness_does(spec, profile, runs, scorecard):
    r = _evaluate(spec, profile, runs)
    p = r.metrics["protocol"]
    scorecard.check(
        p["share_with_other_prediction"], data=f"{p['task']}, {p['items']} items, model {p['model']}",
        items_with_other_prediction=p["items_with_other_prediction"], harness_acc=p["harness_acc"],
        our_acc=p["our_acc"], acc_abs_diff=p["acc_abs_diff"], recomputed=p["recomputed"],
        max_loglikelihood_abs_diff=p["max_loglikelihood_abs_diff"], prompt_mismatches=p["prompt_mismatches"],
        scoring=p["scoring"], protocol_file=str(r.run_dir / "protocol.json"))
    if p["prompt_mismatches"] is not None:
        assert p["prompt_mismatches"] == 0, "the harness scored the prompts our JSONL holds"


@pytest.mark.check("w15", target="leaderboard_max_abs_diff")
def test_reference_model_lands_on_its_published_leaderboard_scores(spec, profile, runs, scorecard):
    r = _evaluate(spec, profile, runs)
    lb = r.metrics["leaderboard"]
    scorecard.check(
        lb["max_abs_diff"], data=_data(r.metrics), model=lb["model"],
        per_task="\n".join(["| task | ours | published | abs diff |", "|---|---|---|---|"]
                           + [f"| {t} | {d['ours']:.2f} | {d['published']:.2f} | {d['abs_diff']:.2f} |"
                              for t, d in lb["tasks"].items()]), **_context(r))
