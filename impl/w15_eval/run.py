"""w15 end to end: every model of the profile on every task through `lm_eval.simple_evaluate`, one raw harness JSON
per model, the comparison report, and the protocol check (one task's accuracy recomputed outside the harness).

    python -m impl train w15 --profile cpu    # SmolLM2, w07's tuned SmolLM2 and the w01 GPT on 5 BIG-bench tasks

A run directory holds: tasks/<task>/ (the lm-eval YAML and the JSONL it read: local tasks), results/<model>.json
(the harness's output for that model, every task), protocol.json, report.md, metrics.json (last).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from impl.core.artifacts import RunResult, Runs, write_json
from impl.core.errors import MilestonesError
from impl.units import w15
from impl.w15_eval.spec import W15Spec


class EvalError(MilestonesError):
    pass


class NotACausalLM(EvalError):
    pass


class UnknownTask(EvalError):
    pass


SABOTAGES = ("equal_loglikelihoods",)


# --- the models ----------------------------------------------------------------------------------------------
def check_causal_lm(name: str, path: str) -> None:
    """A local model directory must hold a causal LM (an architecture AutoModelForCausalLM maps); hub ids are
    left to the loader."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    p = Path(path)
    if not (p.is_dir() or path.startswith(("/", "."))):
        return
    if not (p / "config.json").exists():
        raise NotACausalLM(f"model {name!r}: {p} holds no model (config.json missing)")
    config = json.loads((p / "config.json").read_text())
    archs = config.get("architectures") or []
    causal = {c for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for c in ([v] if isinstance(v, str) else v)}
    if not any(a in causal for a in archs):
        raise NotACausalLM(f"model {name!r}: {p} is not a causal LM (architectures {archs}, model_type "
                           f"{config.get('model_type')!r}); w15 evaluates causal LMs (AutoModelForCausalLM), e.g. "
                           f"fixture:smollm2, w07:lora or w01")


def resolve_models(spec: W15Spec, upstream: dict[str, Path]) -> dict[str, dict]:
    """name -> {kind: hf | w01, path, ref}. `upstream`: the run directories of the other milestones' runs the
    models name ("w01", "w07:lora"), which the caller got through the adapters."""
    from impl.core.hf import resolve_model

    out = {}
    for name, ref in spec.models.items():
        if ref == "w01" or ref.startswith("w07:"):
            if ref not in upstream:
                raise MilestonesError(f"w15's model {name} is {ref}: it needs that run (upstream has "
                                      f"{sorted(upstream) or 'none'})")
            path = Path(upstream[ref])
            out[name] = {"kind": "w01", "path": str(path), "ref": ref} if ref == "w01" else \
                {"kind": "hf", "path": str(path / "merged"), "ref": ref}
        else:
            path = resolve_model(ref)
            check_causal_lm(name, path)
            out[name] = {"kind": "hf", "path": path, "ref": ref}
    return out


def _torch_dtype(spec: W15Spec):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]


def load_hf(path: str, spec: W15Spec):
    from transformers import AutoModelForCausalLM

    from impl.core.hf import device, load_model, load_tokenizer

    model = load_model(AutoModelForCausalLM, path, dtype=_torch_dtype(spec)).to(device()).eval()
    return model, load_tokenizer(path)


def make_lm(name: str, model: dict, spec: W15Spec, sabotage: str | None = None):
    """The lm-eval LM for one model: HFLM over the loaded transformers model, our GPTLM for the w01 GPT, or (the
    sabotage twin) a model whose every log-likelihood is 0."""
    from impl.core.hf import device

    if sabotage == "equal_loglikelihoods" and name == spec.pretrained:
        from impl.w15_eval.twins import EqualLoglikelihoodLM

        return EqualLoglikelihoodLM()
    if model["kind"] == "w01":
        from impl.w01_gpt.train import load_trained
        from impl.w15_eval.gpt_lm import GPTLM

        gpt, tok = load_trained(Path(model["path"]))
        return GPTLM(gpt, tok, batch_size=spec.batch_size if isinstance(spec.batch_size, int) else 16,
                     device=str(device()))
    from lm_eval.models.huggingface import HFLM

    hf, tok = load_hf(model["path"], spec)
    return HFLM(pretrained=hf, tokenizer=tok, batch_size=spec.batch_size, dtype=spec.dtype)


# --- the tasks -----------------------------------------------------------------------------------------------
def task_manager(spec: W15Spec, include_path: Path | None):
    """lm-eval's task index: the harness's own tasks (indexing its ~14,700 YAMLs takes ~11 s here) and the
    include path's; the local (offline) tasks need only theirs."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path) if include_path else None,
                       include_defaults=spec.tasks.source == "harness")


def check_tasks(spec: W15Spec) -> None:
    """Harness tasks: every name must be one lm-eval (or the include path) knows, before anything is written."""
    if spec.tasks.source != "harness":
        return
    if spec.tasks.include_path and not Path(spec.tasks.include_path).is_dir():
        raise UnknownTask(f"tasks.include_path {spec.tasks.include_path} is not a directory")
    known = set(task_manager(spec, Path(spec.tasks.include_path) if spec.tasks.include_path else None).all_tasks)
    unknown = [t.name for t in spec.tasks.list if t.name not in known]
    if unknown:
        raise UnknownTask(f"unknown lm-eval task(s) {unknown}: neither lm-eval {_harness_version()} nor "
                          f"{spec.tasks.include_path or 'an include_path'} defines them")


def _harness_version() -> str:
    import lm_eval

    return lm_eval.__version__


# --- one run -------------------------------------------------------------------------------------------------
def evaluate(spec: W15Spec, runs: Runs, upstream: dict[str, Path] | None = None, sabotage: str | None = None,
             progress: bool = False) -> RunResult:
    if sabotage not in (None, *SABOTAGES):
        raise ValueError(f"sabotage must be one of {SABOTAGES}; got {sabotage!r}")
    check_tasks(spec)
    models = resolve_models(spec, upstream or {})  # all checked before the run directory exists
    config = {**spec.model_dump(exclude={"targets"}), "resolved": models, "sabotage": sabotage,
              "harness": _harness_version()}
    run_dir = runs.dir_for(config)
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    t0 = time.time()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    chance, data_source = {}, None
    if spec.tasks.source == "local":
        from impl.core.fixtures import origin
        from impl.w15_eval.data import write_task

        data_source = f"mc-benchmarks fixture, {origin('mc-benchmarks')}"
        include = run_dir / "tasks"
        chance = {t.name: write_task(t.name, include, spec.limit, spec.sample_seed) for t in spec.tasks.list}
    else:
        include = Path(spec.tasks.include_path) if spec.tasks.include_path else None
    tm = task_manager(spec, include)

    (run_dir / "results").mkdir(exist_ok=True)
    raw, seconds = {}, {}
    pc = spec.protocol_check
    for name, model in models.items():
        path = run_dir / "results" / f"{name}.json"
        if path.exists():  # an interrupted run: models already scored are kept
            raw[name] = json.loads(path.read_text())
            continue
        t1 = time.time()
        lm = make_lm(name, model, spec, sabotage)
        raw[name] = harness_results(lm, spec, tm, keep_samples=pc.task if pc and pc.model == name else None,
                                    run_dir=run_dir)
        seconds[name] = round(time.time() - t1, 1)
        raw[name]["seconds"] = seconds[name]
        write_json(path, raw[name])
        del lm

    scores = score_table(spec, raw)
    metrics = {
        "models": models, "tasks": [t.model_dump() for t in spec.tasks.list], "scores": scores,
        "averages": averages(scores), "chance": chance, "harness": f"lm-evaluation-harness {_harness_version()}",
        "limit": spec.limit, "sample_seed": spec.sample_seed, "batch_size": spec.batch_size, "dtype": spec.dtype,
        "task_source": spec.tasks.source, "data_source": data_source, "sabotage": sabotage,
        "model_seconds": {n: raw[n].get("seconds") for n in raw},
    }
    if chance:
        metrics["avg_chance"] = sum(c["chance"] for c in chance.values()) / len(chance)
    metrics["cells_missing"] = missing_cells(spec, scores)
    if pc:
        metrics["protocol"] = protocol_check(spec, models[pc.model], pc, run_dir,
                                             raw[pc.model]["results"][pc.task].get("acc,none"))
        write_json(run_dir / "protocol.json", metrics["protocol"])
    if spec.leaderboard_model:
        metrics["leaderboard"] = leaderboard(spec, scores)
    metrics["report"] = report_markdown(metrics)
    (run_dir / "report.md").write_text(metrics["report"])
    metrics["seconds"] = round(time.time() - t0, 1)
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks the run complete
    return RunResult(run_dir, metrics)


def harness_results(lm, spec: W15Spec, tm, keep_samples: str | None = None, run_dir: Path | None = None) -> dict:
    """`lm_eval.simple_evaluate` once per task (each its own n-shot), merged into one harness-format dict."""
    import lm_eval

    merged: dict = {}
    for task in spec.tasks.list:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[task.name], num_fewshot=task.num_fewshot, limit=spec.limit, task_manager=tm,
            batch_size=spec.batch_size, log_samples=task.name == keep_samples, verbosity="ERROR",
            bootstrap_iters=1000)
        samples = out.pop("samples", None)
        if samples and run_dir is not None:
            rows = [{"doc_id": s["doc_id"], "target": s["target"], "arguments": [list(a) for a in s["arguments"]],
                     "resps": s["resps"]} for s in samples[task.name]]
            write_json(run_dir / "protocol_samples.json", rows)
        for key, value in out.items():
            if isinstance(value, dict) and key in ("results", "configs", "n-shot", "higher_is_better", "versions",
                                                   "n-samples", "group_subtasks"):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    return json.loads(json.dumps(merged, default=str))


def score_table(spec: W15Spec, raw: dict) -> dict:
    """model -> task -> {value, stderr, metric, n_shot, n}; a cell the harness did not report (or reported as NaN)
    has value None. A group task with `aggregate: subtask_mean` is the plain mean of its subjects' values (stderr:
    the root of the summed squared stderrs over their count), whatever weighting the harness's group uses."""
    table = {}
    for name, r in raw.items():
        table[name] = {}
        for t in spec.tasks.list:
            n_shot = r.get("n-shot", {}).get(t.name, t.num_fewshot)
            if t.aggregate == "subtask_mean":
                table[name][t.name] = {**_subtask_mean(r, t), "metric": t.metric, "n_shot": n_shot}
                continue
            res = r.get("results", {}).get(t.name, {})
            value, stderr = res.get(f"{t.metric},{t.filter}"), res.get(f"{t.metric}_stderr,{t.filter}")
            n = r.get("n-samples", {}).get(t.name, {}).get("effective")
            table[name][t.name] = {"value": _num(value), "stderr": _num(stderr), "metric": t.metric,
                                   "n_shot": n_shot, "n": n}
    return table


def leaf_subtasks(raw: dict, group: str) -> list[str]:
    """The tasks under `group` in the harness's `group_subtasks`, through its subgroups (mmlu -> mmlu_stem -> ...)."""
    subtasks = raw.get("group_subtasks", {})
    if group not in subtasks:
        return []
    return [leaf for sub in subtasks[group] for leaf in (leaf_subtasks(raw, sub) if sub in subtasks else [sub])]


def _subtask_mean(raw: dict, t) -> dict:
    leaves = leaf_subtasks(raw, t.name)
    cells = [(_num(raw.get("results", {}).get(s, {}).get(f"{t.metric},{t.filter}")),
              _num(raw.get("results", {}).get(s, {}).get(f"{t.metric}_stderr,{t.filter}"))) for s in leaves]
    if not cells or any(v is None for v, _ in cells):  # no subjects, or one missing: the cell is missing
        return {"value": None, "stderr": None, "n": None, "subtasks": len(leaves)}
    stderr = None if any(se is None for _, se in cells) else math.sqrt(sum(se * se for _, se in cells)) / len(cells)
    n = sum(raw.get("n-samples", {}).get(s, {}).get("effective") or 0 for s in leaves) or None
    return {"value": sum(v for v, _ in cells) / len(cells), "stderr": stderr, "n": n, "subtasks": len(leaves)}


def _num(v):
    """A reported number as a float; None where there is none: absent, "N/A", or NaN (which `max` and `mean` would
    otherwise drop or spread without a word)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def averages(scores: dict) -> dict:
    out = {}
    for name, cells in scores.items():
        vals = [c["value"] for c in cells.values()]
        out[name] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    return out


def missing_cells(spec: W15Spec, scores: dict) -> list[str]:
    """Every model x task cell must carry a value and its stderr."""
    return [f"{m} x {t.name}" for m in spec.models for t in spec.tasks.list
            if scores.get(m, {}).get(t.name, {}).get("value") is None
            or scores.get(m, {}).get(t.name, {}).get("stderr") is None]


def leaderboard(spec: W15Spec, scores: dict) -> dict:
    """Our scores of the leaderboard model against its published ones, per task with a published number; a task
    without our score makes the largest difference NaN (which no target passes), never a smaller maximum."""
    m = spec.leaderboard_model
    diffs = {}
    for t in spec.tasks.list:
        if m not in t.published:
            continue
        ours = scores[m][t.name]["value"]
        diffs[t.name] = {"ours": math.nan if ours is None else 100 * ours, "published": t.published[m],
                         "abs_diff": math.nan if ours is None else abs(100 * ours - t.published[m])}
    values = [d["abs_diff"] for d in diffs.values()]
    return {"model": m, "tasks": diffs,
            "max_abs_diff": math.nan if not values or any(math.isnan(v) for v in values) else max(values)}


# --- the protocol check --------------------------------------------------------------------------------------
def protocol_check(spec: W15Spec, model: dict, pc, run_dir: Path, harness_acc: float | None,
                   normalise: bool = False) -> dict:
    """The harness's accuracy (`acc`, its reported number) on one task recomputed without it: the same (context, continuation) pairs (from the
    harness's logged requests; for local tasks they must also equal our own rendering of the JSONL), each choice
    scored by our own summed log-probabilities from transformers, argmax against the target (the unit
    w15.multiple_choice_scores, the harness's multiple-choice metric written out). Gated: the share of items whose
    prediction differs from the harness's (two opposite flips leave the accuracy equal, not the predictions).
    `normalise` (the sabotage twin): the mean log-probability per token instead of the sum."""
    import torch
    import torch.nn.functional as F

    if model["kind"] != "hf":
        raise EvalError(f"protocol_check.model must be a transformers model; {pc.model} is {model['kind']}")
    samples = json.loads((run_dir / "protocol_samples.json").read_text())
    samples.sort(key=lambda s: s["doc_id"])
    if pc.limit:
        samples = samples[:pc.limit]
    prompt_mismatches = None
    if spec.tasks.source == "local":
        from impl.w15_eval.data import read_rows

        rows = read_rows(run_dir / "tasks", pc.task)
        prompt_mismatches = sum(
            [list(a) for a in s["arguments"]] != [[rows[s["doc_id"]]["prompt"], " " + c] for c in rows[s["doc_id"]]["choices"]]
            for s in samples)
    hf, tok = load_hf(model["path"], spec)
    our_lls, n_tokens, max_ll_diff = [], [], 0.0  # per item: each choice's summed log-probability, its token count
    harness_lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    with torch.no_grad():
        for s, theirs in zip(samples, harness_lls):
            lls, lens = [], []
            for context, continuation in s["arguments"]:
                n_spaces = len(context) - len(context.rstrip())
                if n_spaces:
                    context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
                whole = tok(context + continuation)["input_ids"]
                ctx = tok(context)["input_ids"]
                ids = torch.tensor([whole], device=hf.device)
                logp = F.log_softmax(hf(ids).logits[0].float(), dim=-1)
                cont = whole[len(ctx):]
                lls.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
                lens.append(len(cont))
            our_lls.append(lls)
            n_tokens.append(lens)
            max_ll_diff = max(max_ll_diff, max(abs(a - b) for a, b in zip(lls, theirs))) if not normalise else 0.0
    # the accuracy: the unit w15.multiple_choice_scores (its acc; normalise: its acc_norm with token counts as the
    # lengths, i.e. the argmax of the mean log-probability per token)
    pick = 1 if normalise else 0
    gold = [int(s["target"]) for s in samples]
    ours = int(w15.multiple_choice_scores(our_lls, gold, n_tokens)[pick].sum()) / len(samples)
    # the items where our prediction is not the harness's: ours scored against the harness's prediction as gold
    harness_pred = [max(range(len(h)), key=lambda i: h[i]) for h in harness_lls]
    disagree = len(samples) - int(w15.multiple_choice_scores(our_lls, harness_pred, n_tokens)[pick].sum())
    if pc.limit or harness_acc is None:  # a prefix of the items: the harness's accuracy on them, from its log
        harness_acc = int(w15.multiple_choice_scores(harness_lls, gold, n_tokens)[0].sum()) / len(samples)
    return {"task": pc.task, "model": pc.model, "items": len(samples), "harness_acc": harness_acc, "our_acc": ours,
            "acc_abs_diff": abs(ours - harness_acc), "items_with_other_prediction": disagree,
            "share_with_other_prediction": disagree / len(samples),
            "recomputed": ("scoring recomputed (our log-likelihoods, our argmax); prompts taken from the harness's "
                           "log and checked against our rendering of the task's JSONL")
                          if prompt_mismatches is not None else
                          ("scoring recomputed (our log-likelihoods, our argmax); prompts taken from the harness's "
                           "log, not rebuilt: the harness's own task formats them"),
            "max_loglikelihood_abs_diff": max_ll_diff, "prompt_mismatches": prompt_mismatches,
            "scoring": "mean log-probability per token (sabotage)" if normalise else "summed log-probability"}


# --- the report ----------------------------------------------------------------------------------------------
def report_markdown(m: dict) -> str:
    models = list(m["scores"])
    tasks = {t["name"]: t for t in m["tasks"]}
    lines = [f"Harness: {m['harness']} (`lm_eval.simple_evaluate`); limit {m['limit'] or 'none (every item)'} items "
             f"per task (sample seed {m['sample_seed']}); batch size {m['batch_size']}; dtype {m['dtype']}; "
             f"n-shot per task in the table; value ± stderr as the harness reports them.", "",
             "| task | n-shot | metric | " + " | ".join(models) + (" | chance |" if m["chance"] else " |"),
             "|---|---|---|" + "---|" * len(models) + ("---|" if m["chance"] else "")]
    for name, t in tasks.items():
        cells = []
        for model in models:
            c = m["scores"][model][name]
            cells.append("missing" if c["value"] is None else
                         f"{c['value']:.4f} ± {c['stderr']:.4f}" if c["stderr"] is not None else f"{c['value']:.4f} ± ?")
        n_shot = m["scores"][models[0]][name]["n_shot"]
        chance = f" {m['chance'][name]['chance']:.4f} |" if m["chance"] else ""
        lines.append(f"| {name} | {n_shot} | {t['metric']} | " + " | ".join(cells) + " |" + chance)
    avg = [("missing" if m["averages"][x] is None else f"**{m['averages'][x]:.4f}**") for x in models]
    lines.append("| **average** | | | " + " | ".join(avg) + " |" + (f" {m['avg_chance']:.4f} |" if m["chance"] else ""))
    lines.append("")
    lines.append("Models: " + "; ".join(f"{n} = {v['ref']} ({v['kind']}, {v['path']})" for n, v in m["models"].items()))
    return "\n".join(lines)


def bars(m: dict) -> dict:
    """model -> task -> value, for the scorecard's grouped bar chart."""
    return {model: {t: c["value"] for t, c in cells.items()} for model, cells in m["scores"].items()}
