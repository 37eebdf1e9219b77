"""w15's sabotage twins (a model whose log-likelihoods are all equal scores at chance and fails the margin; a
metric the harness does not report leaves cells missing; a recomputation with another scoring rule disagrees
with the harness), the gpu1 path shrunk onto this CPU (lm-eval tasks from an include path in the built-in tasks'
format, a tiny model, bf16, the leaderboard comparison), our GPT as an lm-eval LM, and bad input."""
import json

import pytest
import yaml

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.fixtures import fixture_path
from impl.core.profiles import ProfileError, load_profile
from impl.w15_eval import run
from impl.w15_eval.run import NotACausalLM, UnknownTask
from tests.conftest import tiny_llama_dir

CPU_PROFILE = load_profile("cpu")
CPU = CPU_PROFILE.milestone("w15")
GPU1 = load_profile("gpu1").milestone("w15")


@pytest.fixture
def runs(tmp_path):
    return Runs("w15", "test", root=tmp_path / "artifacts")


def replaced(spec, **fields):
    """A validated copy with top-level fields replaced whole (override merges mappings)."""
    d = spec.model_dump()
    d.update(fields)
    return type(spec).model_validate(d)


def pretrained_only(spec, **more):
    """The cpu protocol (its 5 tasks, its limit) with the pretrained model only: no w01/w07 runs needed."""
    targets = {k: v for k, v in spec.model_dump()["targets"].items() if k != "protocol_items_differing"}
    return replaced(spec, models={spec.pretrained: spec.models[spec.pretrained]}, control=None, protocol_check=None,
                    targets=targets, **more)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), hidden=32, max_positions=512)


# --- sabotage twins ---------------------------------------------------------------------------------------------
def test_equal_loglikelihoods_score_at_chance_and_fail_the_margin(runs):
    """The cpu tasks and sample, the pretrained model replaced by one whose every log-likelihood is 0: the
    harness's argmax takes the first choice, right as often as the gold answer is listed first, and the margin over chance fails."""
    spec = pretrained_only(CPU)
    m = adapters.w15_evaluate(spec, CPU_PROFILE, runs, sabotage="equal_loglikelihoods").metrics
    from impl.w15_eval.data import benchmark_rows

    for t in spec.tasks.list:  # exactly the share of items whose correct choice is listed first
        rows = benchmark_rows(t.name, spec.limit, spec.sample_seed)
        assert m["scores"][spec.pretrained][t.name]["value"] == pytest.approx(
            sum(r["label"] == 0 for r in rows) / len(rows))
    target = CPU.targets["avg_acc_margin"]
    margin = target.checked_value(m["averages"][spec.pretrained], {"chance": m["avg_chance"]})
    assert abs(margin) < 0.06 and not target.passes(margin), margin
    assert m["cells_missing"] == []


def test_a_metric_the_harness_does_not_report_leaves_cells_missing_and_fails(runs):
    spec = pretrained_only(CPU)
    tasks = [{**t.model_dump(), "metric": "exact_match" if i == 0 else t.metric} for i, t in enumerate(spec.tasks.list)]
    spec = replaced(spec, tasks={"source": "local", "list": tasks})
    m = adapters.w15_evaluate(spec, CPU_PROFILE, runs, sabotage="equal_loglikelihoods").metrics
    assert m["cells_missing"] == [f"{spec.pretrained} x {tasks[0]['name']}"]
    assert "missing" in m["report"]
    assert not CPU.targets["report_cells_missing"].passes(len(m["cells_missing"]))


def test_recomputed_accuracy_matches_the_harness_and_another_scoring_rule_does_not(tiny_llama, runs):
    """The protocol check on a tiny model: our summed log-likelihoods reproduce the harness's accuracy exactly; the
    twin, length-normalised log-likelihoods (acc_norm-like), lands elsewhere and fails the target."""
    task = CPU.tasks.list[0].name
    spec = replaced(CPU, models={"tiny": tiny_llama}, pretrained="tiny", control=None, limit=40,
                    tasks={"source": "local", "list": [CPU.tasks.list[0].model_dump()]},
                    protocol_check={"task": task, "model": "tiny"})
    r = adapters.w15_evaluate(spec, CPU_PROFILE, runs)
    p = r.metrics["protocol"]
    target = CPU.targets["protocol_items_differing"]
    assert target.passes(p["share_with_other_prediction"]) and p["prompt_mismatches"] == 0 and p["acc_abs_diff"] == 0
    assert p["max_loglikelihood_abs_diff"] < 1e-3
    twin = run.protocol_check(spec, r.metrics["models"]["tiny"], spec.protocol_check, r.run_dir,
                              p["harness_acc"], normalise=True)
    assert not target.passes(twin["share_with_other_prediction"]), twin


# --- the gpu1 path, shrunk -----------------------------------------------------------------------------------------
def _tiny_harness_tasks(root):
    """Two tasks in the format of lm-eval's built-in ones, over a few local rows: ARC-like multiple choice
    (acc_norm, few-shot from a train split) and GSM8K-like generation (exact_match)."""
    mc = [{"question": f"Which number is larger, {a} or {b}?", "choices": [str(a), str(b)], "label": int(b > a)}
          for a, b in [(3, 7), (9, 2), (5, 6), (8, 1), (4, 10), (12, 11), (2, 3), (7, 5)]]
    gen = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
           for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (6, 3), (2, 7)]]
    for name, rows, cfg in (
        ("tiny_arc", mc, {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                          "doc_to_choice": "{{choices}}", "doc_to_target": "label",
                          "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                          {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}),
        ("tiny_gsm", gen, {"output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
                           "doc_to_target": "{{answer.split('#### ')[-1]}}",
                           "generation_kwargs": {"until": ["\n\n", "Question:"], "max_gen_toks": 8, "do_sample": False},
                           "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}),
    ):
        folder = root / name
        folder.mkdir(parents=True)
        for split, part in (("train", rows[:3]), ("test", rows[3:])):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({
            "task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {s: str(folder / f"{s}.jsonl") for s in ("train", "test")}},
            "training_split": "train", "test_split": "test", "fewshot_split": "train", **cfg,
            "metadata": {"version": 1.0}}))
    return root


@pytest.mark.gpu_smoke
def test_gpu1_path_harness_tasks_from_an_include_path_bf16_and_the_leaderboard_check(tiny_llama, tmp_path, runs):
    """gpu1's code path: harness tasks (here tiny stand-ins from an include path) with per-task n-shot, metric and
    filter, HF models in bf16, the protocol check on a few-shot task, the comparison with published scores."""
    assert GPU1.tasks.source == "harness" and GPU1.leaderboard_model in GPU1.models and GPU1.dtype == "bfloat16"
    include = _tiny_harness_tasks(tmp_path / "tasks")
    lead = GPU1.leaderboard_model
    spec = replaced(GPU1, models={lead: tiny_llama, "other": tiny_llama}, limit=None, batch_size=4,
                    tasks={"source": "harness", "include_path": str(include), "list": [
                        {"name": "tiny_arc", "num_fewshot": 2, "metric": "acc_norm", "published": {lead: 50.0}},
                        {"name": "tiny_gsm", "num_fewshot": 1, "metric": "exact_match", "published": {lead: 0.0}}]},
                    protocol_check={"task": "tiny_arc", "model": lead, "limit": None}, pretrained=lead)
    r = adapters.w15_evaluate(spec, CPU_PROFILE, runs)
    m = r.metrics
    assert m["cells_missing"] == [] and m["scores"][lead]["tiny_arc"]["n_shot"] == 2
    # a random tiny model in bf16 puts choices within bf16 rounding of each other: one-at-a-time vs padded batches
    # may flip a near tie (the cpu form, fp32, is exact); the path runs, the numbers are compared item by item
    assert m["protocol"]["items"] == 5 and m["protocol"]["items_with_other_prediction"] <= 1
    assert "prompts taken from the harness's log" in m["protocol"]["recomputed"]
    assert set(m["leaderboard"]["tasks"]) == {"tiny_arc", "tiny_gsm"}
    assert m["leaderboard"]["max_abs_diff"] == max(d["abs_diff"] for d in m["leaderboard"]["tasks"].values())
    raw = json.loads((r.run_dir / "results" / f"{lead}.json").read_text())
    assert set(raw["results"]) == {"tiny_arc", "tiny_gsm"} and raw["n-shot"]["tiny_arc"] == 2
    assert "| tiny_arc | 2 | acc_norm |" in m["report"] and "bfloat16" in m["report"]


# --- our GPT as an lm-eval LM --------------------------------------------------------------------------------------
def test_gpt_lm_answers_the_three_request_types_like_a_direct_computation():
    import torch
    import torch.nn.functional as F
    from lm_eval.api.instance import Instance
    from transformers import GPT2TokenizerFast

    from impl.w15_eval.gpt_lm import GPTLM

    tok = GPT2TokenizerFast.from_pretrained(str(fixture_path("gpt2-tokenizer")))
    torch.manual_seed(0)
    gpt = adapters.w01_model(len(tok), 16, 1, 2, 16)
    lm = GPTLM(gpt, tok, batch_size=2)

    def req(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    ctx, cont = "The cat sat on the", " mat"
    (ll, greedy), = lm.loglikelihood([req("loglikelihood", (ctx, cont))])
    ids = tok.encode(ctx + cont)
    n = len(ids) - len(tok.encode(ctx))
    with torch.no_grad():
        logp = F.log_softmax(gpt(torch.tensor([ids[:-1]]))[0][0], -1)
    assert ll == pytest.approx(sum(float(logp[len(ids) - 1 - n + i, t]) for i, t in enumerate(ids[-n:])), abs=1e-4)
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    (rolling,) = lm.loglikelihood_rolling([req("loglikelihood_rolling", (long,))])
    assert rolling < 0 and len(tok.encode(long)) > 16  # two windows of the 16-token context
    (text,) = lm.generate_until([req("generate_until", ("Hello", {"until": ["\n"], "max_gen_toks": 5}))])
    assert isinstance(text, str) and "\n" not in text


# --- bad input ---------------------------------------------------------------------------------------------------
def test_an_unknown_local_task_in_a_profile_is_one_clear_error(tmp_path):
    raw = yaml.safe_load(CPU_PROFILE.path.read_text())
    raw["milestones"] = {"w15": raw["milestones"]["w15"]}
    raw["milestones"]["w15"]["tasks"]["list"][0]["name"] = "mc_no_such_task"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match="unknown local task.*mc_no_such_task"):
        load_profile(path)


def test_an_unknown_harness_task_is_one_clear_error_and_writes_nothing(tmp_path, runs):
    spec = replaced(GPU1, models={"m": "fixture:smollm2"}, leaderboard_model=None, pretrained="m",
                    protocol_check=None, targets={}, tasks={"source": "harness",
                                                          "list": [{"name": "no_such_lm_eval_task"}]})
    with pytest.raises(UnknownTask, match="no_such_lm_eval_task"):
        adapters.w15_evaluate(spec, CPU_PROFILE, runs)
    assert not (tmp_path / "artifacts").exists()


def test_a_model_directory_that_is_not_a_causal_lm_is_one_clear_error_and_writes_nothing(tmp_path, runs):
    spec = replaced(pretrained_only(CPU), models={CPU.pretrained: "fixture:minilm"})
    with pytest.raises(NotACausalLM, match="not a causal LM"):
        adapters.w15_evaluate(spec, CPU_PROFILE, runs)
    with pytest.raises(NotACausalLM, match="config.json missing"):
        adapters.w15_evaluate(replaced(spec, models={CPU.pretrained: str(tmp_path)}), CPU_PROFILE, runs)
    assert not (tmp_path / "artifacts").exists()


def test_the_scorecard_draws_a_grouped_bar_chart_of_the_scores():
    from impl.core.scorecard import bars_svg

    svg = bars_svg({"extra": {"scores by model": {"a": {"t1": 0.5, "t2": 0.25}, "b": {"t1": 0.75, "t2": None}}}})
    assert svg.count("<rect") == 3 + 2 and "t2" in svg and ">b<" in svg  # 3 bars + 2 legend boxes


# --- the scores as the gpu1 comparison reads them ----------------------------------------------------------------
def _raw(values: dict, stderr: float = 0.01, group_value: float | None = None) -> dict:
    """A harness result of mmlu's shape: mmlu -> two subgroups -> subjects, each subject with its value."""
    results = {s: {"acc,none": v, "acc_stderr,none": stderr} for s, v in values.items()}
    if group_value is not None:
        results["mmlu"] = {"acc,none": group_value, "acc_stderr,none": stderr}
    subjects = sorted(values)
    half = len(subjects) // 2
    return {"results": results, "n-shot": {"mmlu": 5},
            "group_subtasks": {"mmlu": ["mmlu_stem", "mmlu_other"], "mmlu_stem": subjects[:half],
                               "mmlu_other": subjects[half:]},
            "n-samples": {s: {"effective": 100} for s in subjects}}


def test_mmlu_is_the_plain_mean_of_its_subjects_not_the_harness_size_weighted_group():
    mmlu = next(t for t in GPU1.tasks.list if t.name == "mmlu")
    assert mmlu.aggregate == "subtask_mean"
    spec = replaced(GPU1, tasks={"source": "harness", "list": [mmlu.model_dump()]},
                    models={m: "x" for m in GPU1.models}, protocol_check={"task": "mmlu", "model": GPU1.leaderboard_model})
    # the harness's group weights subjects by size: 0.70 here; the leaderboard's plain mean is 0.50
    raw = _raw({"mmlu_a": 0.2, "mmlu_b": 0.4, "mmlu_c": 0.6, "mmlu_d": 0.8}, group_value=0.70)
    cell = run.score_table(spec, {m: raw for m in spec.models})[spec.leaderboard_model]["mmlu"]
    assert cell["value"] == pytest.approx(0.5) and cell["subtasks"] == 4 and cell["n"] == 400
    assert cell["stderr"] == pytest.approx(0.01 / 2)  # sqrt(4 x 0.01^2) / 4
    harness_group = replaced(spec, tasks={"source": "harness", "list": [{**mmlu.model_dump(), "aggregate": "harness"}]})
    assert run.score_table(harness_group, {m: raw for m in spec.models})[spec.leaderboard_model]["mmlu"]["value"] == 0.70


def test_a_nan_cell_is_missing_and_fails_the_missing_cells_and_leaderboard_gates():
    mmlu = next(t for t in GPU1.tasks.list if t.name == "mmlu")
    arc = next(t for t in GPU1.tasks.list if t.name != "mmlu" and GPU1.leaderboard_model in t.published)
    spec = replaced(GPU1, tasks={"source": "harness", "list": [mmlu.model_dump(), arc.model_dump()]},
                    models={m: "x" for m in GPU1.models}, protocol_check={"task": "mmlu", "model": GPU1.leaderboard_model})
    lead = spec.leaderboard_model
    good = {**_raw({"mmlu_a": 0.6, "mmlu_b": 0.7})}
    good["results"][arc.name] = {f"{arc.metric},{arc.filter}": arc.published[lead] / 100,
                                 f"{arc.metric}_stderr,{arc.filter}": 0.01}
    scores = run.score_table(spec, {m: good for m in spec.models})
    assert run.missing_cells(spec, scores) == [] and run.leaderboard(spec, scores)["max_abs_diff"] == pytest.approx(
        abs(65 - mmlu.published[lead]))
    for broken in ("task", "subject"):  # NaN in a task's own cell, or in one subject of the mean
        bad = json.loads(json.dumps(good))
        if broken == "task":
            bad["results"][arc.name][f"{arc.metric},{arc.filter}"] = float("nan")
        else:
            bad["results"]["mmlu_b"]["acc,none"] = "NaN"
        scores = run.score_table(spec, {m: bad for m in spec.models})
        missing = run.missing_cells(spec, scores)
        assert f"{lead} x {arc.name if broken == 'task' else 'mmlu'}" in missing
        assert not GPU1.targets["report_cells_missing"].passes(len(missing))
        worst = run.leaderboard(spec, scores)["max_abs_diff"]
        assert worst != worst and not GPU1.targets["leaderboard_max_abs_diff"].passes(worst), worst
