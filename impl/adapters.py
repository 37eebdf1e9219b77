"""The one place where tests reach the implementations (as in Stanford CS336).

To check your own implementation against the suite, change what these functions call; the acceptance tests,
the fast tests and the benchmarks only ever go through here.
"""
from __future__ import annotations

from impl.core.artifacts import RunResult, Runs


# --- w01: GPT from scratch --------------------------------------------------------------------------------
def w01_model(vocab_size: int, context: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0):
    """A decoder-only LM: forward(idx, targets=None) -> (logits, loss)."""
    from impl.w01_gpt.model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size, context, n_layer, n_head, n_embd, dropout))


def w01_train(spec, runs: Runs, progress: bool = False) -> RunResult:
    """Train (or reuse / resume) the profile's w01 run; metrics include val_ppl, val_bpb and unigram_val_ppl."""
    from impl.w01_gpt import train

    with runs.exclusive():
        return train.run(spec, runs.dir_for(spec.model_dump(exclude={"targets", "ddp_parity"})), progress=progress)


def w01_ddp_parity(spec, runs: Runs, skip_allreduce: bool = False) -> dict:
    """One process vs `ddp_parity.nproc` DDP processes with the same global batch; returns the differences."""
    from impl.w01_gpt import ddp_parity

    return ddp_parity.run(spec, runs, skip_allreduce=skip_allreduce)


# --- w03: fine-tuning with Hugging Face -------------------------------------------------------------------
def w03_classifier(spec, runs: Runs, progress: bool = False, shuffle_labels: bool = False) -> RunResult:
    """Fine-tune the profile's pretrained encoder into a sentiment classifier; metrics: accuracy (test split),
    the baselines majority_class and tfidf_logreg on the same split, val_accuracy."""
    from impl.w03_finetune import classifier

    config = {**spec.classifier.model_dump(), "shuffle_labels": shuffle_labels}
    return classifier.run(spec.classifier, runs.dir_for(config, name="classifier"), progress, shuffle_labels)


def w03_clm(spec, runs: Runs, progress: bool = False) -> RunResult:
    """Fine-tune the profile's causal LM; metrics: val_ppl, ppl_before_finetune, stories (prompt, story)."""
    from impl.w03_finetune import clm

    return clm.run(spec.clm, runs.dir_for(spec.clm.model_dump(), name="clm"), progress)


def w03_mlm(spec, runs: Runs, progress: bool = False) -> RunResult:
    """Pretrain a BERT with MLM from scratch; metrics: masked_accuracy and the most_frequent_token baseline."""
    from impl.w03_finetune import mlm

    return mlm.run(spec.mlm, runs.dir_for(spec.mlm.model_dump(), name="mlm"), progress)


# --- w05: DeepSpeed ZeRO --------------------------------------------------------------------------------
def w05_train(spec, runs: Runs, gpu_hour_usd: float | None = None) -> RunResult:
    """Train the w01 GPT through `deepspeed.initialize` (ZeRO `train.zero_stage`) on `train.nproc` processes;
    metrics: val_ppl, unigram_val_ppl, train_tokens_per_s, peak_memory_mb_per_rank, device_hours, cost_usd."""
    from impl.w05_deepspeed import run

    return run.train(spec, runs, gpu_hour_usd=gpu_hour_usd)


def w05_compare(spec, runs: Runs, same_shard: bool = False, unpartitioned: bool = False) -> dict:
    """Plain DDP and ZeRO at each of `compare.stages` for `compare.steps` steps, same seed and global batch:
    zero2_ddp_max_loss_diff, optimizer_state_ratio (ZeRO-2 / DDP bytes per rank) and every run's numbers.
    Sabotage twins: `same_shard`, the ZeRO-2 ranks all train on rank 0's slice of the batch; `unpartitioned`,
    stage 0 runs where ZeRO-2 should."""
    from impl.w05_deepspeed import run

    return run.compare(spec, runs, same_shard=same_shard, unpartitioned=unpartitioned)


def w05_stage_table(comparison: dict, gpu_hour_usd: float | None = None) -> str:
    """The Markdown ZeRO stage table of a `w05_compare` result (memory per rank, tokens/s, cost)."""
    from impl.w05_deepspeed.run import stage_table_markdown

    return stage_table_markdown(comparison, gpu_hour_usd)


# --- w07: LoRA / QLoRA instruction tuning --------------------------------------------------------------
def w07_tune(spec, runs: Runs, variant: str, progress: bool = False) -> RunResult:
    """Instruction-tune the profile's model with `variant` "lora" or "qlora" (4-bit NF4 base); metrics:
    rougeL_before, rougeL_after (held-out examples, same greedy decoding), examples, adapter and merged model dirs."""
    from impl.w07_lora import tune

    if variant not in ("lora", "qlora"):
        raise ValueError(f"variant must be 'lora' or 'qlora'; got {variant!r}")
    with runs.exclusive():
        return tune.run(spec, variant, runs.dir_for({**spec.model_dump(exclude={"targets"}), "variant": variant},
                                                     name=variant), progress)


# --- w09: quantisation and serving ----------------------------------------------------------------------
def w09_model(spec, profile, runs: Runs) -> str:
    """The model w09 quantises and serves: `w07:lora` is the merged output of the profile's w07 LoRA run (reused
    when complete, trained otherwise); any other value is a model reference."""
    from impl.w09_serve import run

    return run.model_dir(spec, profile, runs.root)


def w09_quantize(spec, model: str, runs: Runs, sabotage_bits: int | None = None) -> RunResult:
    """The model unquantised and as each of `quantize.variants` (bitsandbytes int8 / nf4); per variant:
    memory_footprint_mb, ppl (held-out text), rougeL (held-out instructions) and their ratios / changes against
    the unquantised model. `sabotage_bits` (the twin): round-to-nearest at that many bits instead."""
    from impl.w09_serve import run

    return run.quantization(spec, model, runs, sabotage_bits)


def w09_serve_under_load(spec, model: str, out_dir, max_batch_size: int | None = None) -> dict:
    """`python -m impl serve` on loopback with the profile's settings (or another batch limit) under locust's
    headless load; mean/p50/p95 latency, requests_per_s, failed_requests, the server's mean batch size."""
    from impl.w09_serve import run

    return run.serve_under_load(spec, model, out_dir, max_batch_size)


# --- w11: retrieval-augmented QA with LangChain ------------------------------------------------------------
def w11_rag(spec, runs: Runs, progress: bool = False, retriever: str = "dense") -> RunResult:
    """Build (or reuse) the profile's FAISS index and answer its sampled questions closed-book, with RAG and with
    the gold paragraph (oracle); metrics: f1, exact_match, closed_book_f1, oracle_f1, recall_at_k with its
    bm25 and random baselines, latency_ms (retrieval, generation: p50/p95). `retriever` "random" (the sabotage
    twin): the chain retrieves k random chunks."""
    from impl.w11_rag import run

    return run.run(spec, runs, progress, retriever)


def w11_chain(spec, runs: Runs):
    """The LangChain RAG chain itself (question -> short answer) over the profile's index, for interactive use."""
    from impl.core.hf import resolve_model
    from impl.w11_rag import chain, index, run
    from impl.w11_rag.data import load_qa

    documents = run.indexed_documents(spec, load_qa(spec.data))
    index_dir = run.build_index(spec, Runs(runs.milestone, runs.profile, reuse=True, root=runs.root), documents)
    store, _, _ = index.load(index_dir / "index", resolve_model(spec.embedding_model), spec.embedding_model)
    g = spec.generate
    generator = chain.load_generator(resolve_model(spec.generator), g.max_new_tokens, g.max_prompt_tokens,
                                     g.batch_size, g.dtype)
    return chain.rag_chain(store.as_retriever(search_kwargs={"k": spec.retrieve_k}), generator)


# --- w13: tensor and pipeline parallelism -----------------------------------------------------------------
def w13_parallel(spec, runs: Runs, kind: str, sabotage: bool = False, timeout_s: float = 1800,
                 inject_fault: str | None = None) -> dict:
    """`kind` "tp" (Megatron-style tensor parallel) or "pp" (a pipeline) on `parity.nproc` processes, against the
    same GPT in one process: max_grad_diff, max_logit_diff, loss_diff, max_param_diff, tokens/s, memory."""
    from impl.w13_parallel.run import run

    return run(spec, runs, kind, sabotage=sabotage, timeout_s=timeout_s, inject_fault=inject_fault)


def w13_analysis(tp: dict | None, pp: dict | None) -> str:
    """The Markdown efficiency analysis computed from `w13_parallel` results."""
    from impl.w13_parallel.run import analysis_markdown

    return analysis_markdown(tp, pp)


# --- w15: evaluation with lm-evaluation-harness -------------------------------------------------------------
def w15_evaluate(spec, profile, runs: Runs, sabotage: str | None = None) -> RunResult:
    """Every model of the profile on every task through `lm_eval.simple_evaluate` (w01's GPT and w07's tuned model
    reused when complete, trained first otherwise); metrics: scores (model -> task -> value, stderr, n-shot),
    averages, chance (local tasks), cells_missing, protocol (one task's accuracy recomputed outside the harness),
    leaderboard (when the profile names published scores), report (Markdown). `sabotage="equal_loglikelihoods"`
    (the twin): the pretrained model replaced by one whose every log-likelihood is 0."""
    from impl.w15_eval import run

    return run.evaluate(spec, profile, runs, sabotage=sabotage)


# --- w23: the portfolio site -----------------------------------------------------------------------------------------
def w23_build(spec, scorecard_path, out_dir, history_path=None):
    """Build the MkDocs site from a scorecard.json (its history.jsonl beside it) and the spec's interviews YAML
    into `out_dir` (atomically); returns a Site (path, pages, numbers marked up, rows, evidence)."""
    from pathlib import Path

    from impl.w23_portfolio import site

    return site.build(Path(scorecard_path), Path(out_dir), spec.path(spec.interviews), history_path,
                      spec.required_interviews)


def w23_browse(spec, site, screenshot=None) -> dict:
    """Every page of a built site in headless Chromium: console_errors, broken_links, broken_images, links and
    images checked, and a screenshot of the index."""
    from impl.w23_portfolio import check

    return check.browse(site.path, screenshot, tuple(spec.window))


def w23_problems(browsed: dict) -> int:
    from impl.w23_portfolio import check

    return check.problems(browsed)


def w23_numbers(site, scorecard_path=None) -> tuple:
    """(numbers checked, mismatches) of a built site against the records it cites (the scorecard.json it was
    built from, unless another is given)."""
    import json
    from pathlib import Path

    from impl.w23_portfolio import check
    from impl.w23_portfolio import site as site_mod

    source = Path(scorecard_path) if scorecard_path else Path(site.path) / site_mod.SOURCE_DIR / "scorecard.json"
    card = json.loads(source.read_text())
    history = site_mod.load_history(source.with_name("history.jsonl"))
    return check.numbers_mismatched(site.path, card, history)


def w23_evidence(spec):
    """The spec's interviews YAML, validated (a missing file is no evidence yet)."""
    from impl.w23_portfolio.evidence import load_evidence

    return load_evidence(spec.path(spec.interviews))


from impl.w23_portfolio.check import BrowserMissing as w23_BrowserMissing  # noqa: E402 (no selenium at import)
