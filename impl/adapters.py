"""The one place where tests reach the implementations (as in Stanford CS336).

To check your own implementation against the suite, change what these functions call; the acceptance tests,
the fast tests and the benchmarks only ever go through here.
"""
from __future__ import annotations

from impl.core.artifacts import RunResult, Runs


# --- w01: GPT from scratch --------------------------------------------------------------------------------
def w01_model(vocab_size: int, context: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0):
    """A decoder-only LM: forward(idx) -> (logits, None); forward(idx, targets) -> (None or logits, loss)."""
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
    when complete, trained otherwise: w09 receives it from here); any other value is a model reference."""
    from impl.w09_serve import run

    if not spec.model.startswith("w07:"):
        return run.model_dir(spec)
    w07 = profile.milestone("w07")
    run.check_held_out(spec, w07)
    tuned = w07_tune(w07, Runs("w07", profile.name, reuse=True, root=runs.root), spec.model.split(":", 1)[1])
    return run.model_dir(spec, tuned.run_dir)


def w09_quantize(spec, model: str, runs: Runs, sabotage_bits: int | None = None) -> RunResult:
    """The model unquantised and as each of `quantize.variants` (bitsandbytes int8 / nf4); per variant:
    memory_footprint_mb, ppl (held-out text), rougeL (held-out instructions) and their ratios / changes against
    the unquantised model. `sabotage_bits` (the twin): round-to-nearest at that many bits instead."""
    from impl.w09_serve import run

    return run.quantization(spec, model, runs, sabotage_bits)


def w09_serve_under_load(spec, model: str, out_dir, serve_as: dict | None = None) -> dict:
    """`python -m impl serve` on loopback with the profile's settings (changed by `serve_as`, e.g.
    {"batching": "static"}) under locust's headless load; mean/p50/p95 latency, requests_per_s, failed_requests,
    time to first token and inter-token latency when streamed, the server's own batch account; the reference
    (one request at a time) beside it when the protocol names one."""
    from impl.w09_serve import run

    return run.serve_under_load(spec, model, out_dir, serve_as)


# --- w11: retrieval-augmented QA with LangChain ------------------------------------------------------------
def w11_rag(spec, runs: Runs, progress: bool = False, retriever: str = "dense") -> RunResult:
    """Build (or reuse) the profile's FAISS index and answer its sampled questions closed-book, with RAG, with k
    random chunks and with the gold paragraph (oracle), and by copying the retrieved sentence sharing most words
    with the question; metrics: f1, exact_match, closed_book_f1, random_context_f1, oracle_f1, copy_f1,
    recall_at_k with its bm25 and random baselines, latency_ms (retrieval, reading: p50/p95). `retriever`
    "random" (the sabotage twin): the chain retrieves k random chunks."""
    from impl.w11_rag import run

    return run.run(spec, runs, progress, retriever)


def w11_chain(spec, runs: Runs):
    """The LangChain RAG chain itself (question -> short answer) over the profile's index, for interactive use."""
    from impl.core.hf import resolve_model
    from impl.w11_rag import chain, index, run
    from impl.w11_rag.data import load_qa

    documents = run.indexed_documents(spec, load_qa(spec.data))
    index_dir = run.build_index(spec, runs.reusing(), documents)
    store, _, _ = index.load(index_dir / "index", resolve_model(spec.embedding_model), spec.embedding_model)
    return chain.rag_chain(store.as_retriever(search_kwargs={"k": spec.retrieve_k}), run.load_reader(spec))


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

    upstream = {}  # the runs of other milestones the profile's models name, handed to w15 (reused when complete)
    for ref in spec.models.values():
        if ref == "w01":
            w01_runs = Runs("w01", profile.name, reuse=True, root=runs.root)
            upstream[ref] = w01_train(profile.milestone("w01"), w01_runs).run_dir
        elif ref.startswith("w07:"):
            upstream[ref] = w07_tune(profile.milestone("w07"), Runs("w07", profile.name, reuse=True, root=runs.root),
                                     ref.split(":", 1)[1]).run_dir
    return run.evaluate(spec, runs, upstream, sabotage=sabotage)


# --- w21: multi-node training (two hosts, faults, manifests; w21-cluster) -----------------------------------
def w21_two_host_parity(spec, runs: Runs, sabotage: str | None = None) -> dict:
    """w05's GPT under DeepSpeed ZeRO-2 on one host, then on two hosts (two network namespaces, each launching
    its node rank); max_loss_diff per step, tokens/s of both, scaling_efficiency and its note. Sabotage twins:
    "global_batch" (the two-host run trains on half the global batch), "same_shard" (both ranks on one slice)."""
    from impl.w21_infra import multihost

    return multihost.parity(spec, runs, sabotage=sabotage)


def w21_single_host(spec, runs: Runs) -> dict:
    """The single-host reference alone: metrics, curve [(step, loss)], run_dir."""
    from impl.w21_infra import multihost

    return multihost.single_host(spec, runs)


def w21_two_host(spec, runs: Runs, sabotage: str | None = None) -> dict:
    """The two-host run alone (same sabotage twins as w21_two_host_parity): metrics, curve, run_dir."""
    from impl.w21_infra import multihost

    return multihost.two_host(spec, runs, sabotage=sabotage)


def w21_fault_and_resume(spec, runs: Runs, uninterrupted: dict | None = None, sabotage: str | None = None) -> dict:
    """Host 1 killed mid-step at the seeded point (multihost.kill_point): detect_seconds (host 0's launcher exiting
    with the error; inf when it is still running fault.detect_timeout_s later), then both hosts resumed from the
    last complete checkpoint: resumed_from_step against expected_resume_step (found on disk after the kill), and
    final_loss_diff against the uninterrupted run. Sabotage "fresh_weights": the relaunch starts at the
    checkpoint's step without loading it; "freeze": host 1 is stopped, not killed, and host 0 never notices."""
    from impl.w21_infra import multihost

    return multihost.fault_and_resume(spec, runs, uninterrupted, sabotage=sabotage)


def w21_render(spec, out_dir):
    """TrainJob, Indexed Job + headless Service, DeepSpeed hostfile and launch.sh from the spec's cluster section."""
    from pathlib import Path

    from impl.w21_infra import manifests

    return manifests.render(spec, Path(out_dir))


def w21_validate(spec, rendered) -> dict:
    """Offline validation of rendered manifests: {checked, invalid: {object: problems}, kubernetes_version, crd}."""
    from impl.w21_infra import manifests

    return manifests.validate(spec, rendered)


# --- w21: the image and container parity (w21-container) -------------------------------------------------------
def w21_container_parity(spec, runs: Runs, w01_override: dict | None = None) -> RunResult:
    """The suite's CPU image built here (debootstrap base kept, image tag removed after), w01 trained with
    `python -m impl train w01` on the host and in a container of that image (fixture cache read-only, no network);
    metrics: container_loss_diff (max |loss| difference over the logged steps and the validation loss),
    host/container (curves, val_loss, tokens/s), build (seconds, size), image_contents.
    `w01_override` changes the container side only (e.g. {"train": {"seed": 1}})."""
    from impl.w21_infra import container

    return container.container_parity(spec, runs, w01_override)


def w21_build_image(spec=None, **kw) -> dict:
    """Build deploy/docker/Dockerfile.<flavor> (the CLI's `deploy build`); keeps the tag; returns its info."""
    from impl.w21_infra import images

    return images.build_image(spec, **kw)


# --- w17: RLHF (SFT, reward model, PPO) ------------------------------------------------------------------------
def w17_rlhf(spec, runs: Runs, progress: bool = False, shuffle_pairs: bool = False,
             sabotage: str | None = None) -> RunResult:
    """The three stages (SFT policy; preference pairs labelled by a sentiment classifier trained on human labels +
    TRL RewardTrainer; PPO against the reward model; TRL's GRPO as a comparison when the profile has `grpo`), each
    resumed when interrupted and reused when complete if `runs.reuse`, then the RLHF policy judged against the SFT
    policy on held-out prompts; metrics: win_rate (the MiniLM-probe judge on the human labels the labeller never saw,
    ties half), wins/losses/ties, lexicon_win_rate (VADER, not gated), fluency_drop (the fluency
    LM's per-token log-likelihood, SFT minus RLHF), diversity (distinct-2 RLHF / SFT), pair_accuracy with its
    baselines (untrained head, SFT log-likelihood ranking), kl_to_reference, reward_curve, examples.
    `shuffle_pairs` (the reward model's twin): half the training pairs' labels swapped. `sabotage`: the SFT policy
    at a colder temperature ("sft_at_0.5", "sft_at_0.7") or a favourite-words policy ("favourite_words") judged in
    the PPO policy's place. The PPO twin: ppo.lr 0."""
    from impl.w17_rlhf import run

    return run.run(spec, runs, progress, shuffle_pairs, sabotage)


def w17_read_pairs(path) -> list[dict]:
    """A preference JSONL (prompt, chosen, rejected), checked: one clear error for a missing field or empty answer."""
    from impl.w17_rlhf.data import read_pairs

    return read_pairs(path)


# --- w19: web-data cleaning, dedup and a custom tokenizer -------------------------------------------------------
def w01_training_parts():
    """w01's model and training pieces, which other milestones receive (from here) rather than copy or import:
    model(vocab_size, context, n_layer, n_head, n_embd, dropout), make_optimizer(model, spec), lr_at(step, spec)
    (both read only `spec.train`), clip_grad_norm(grads, max_norm), batch(tokens, seed, step, batch_size,
    context), evaluate(model, tokens, context, stride, max_tokens, device)."""
    from types import SimpleNamespace

    from impl.units import w01
    from impl.w01_gpt.data import batch
    from impl.w01_gpt.train import evaluate, lr_at, make_optimizer

    return SimpleNamespace(model=w01_model, make_optimizer=make_optimizer, lr_at=lr_at,
                           clip_grad_norm=lambda grads, max_norm: w01.clip_grad_norm(grads, max_norm), batch=batch,
                           evaluate=evaluate)


def w19_clean(spec, runs: Runs, sabotage: str | None = None) -> RunResult:
    """The raw mix (cpu) or hub documents (gpu1) through the datatrove pipeline into Parquet shards; metrics:
    report (stages with docs in/out and bytes, removed ids and examples per filter), dedup and filters
    (precision/recall/F1 on the planted labels; detection per similarity band against the LSH curve). `sabotage`
    (the twins): "passthrough_filters" passes everything, "exact_only_dedup" skips MinHash,
    "swapped_lsh_bands" runs it with b and r swapped."""
    from impl.w19_data import run

    return run.clean_corpus(spec, runs.reusing(), sabotage)


def w19_tokenizers(spec, runs: Runs, progress: bool = False, sabotage: str | None = None) -> RunResult:
    """Clean (or reuse), train our SentencePiece tokenizer, train the w01 GPT once per tokenizer (ours, GPT-2's
    BPE), each on the same bytes; metrics: bpb (per tokenizer), byte_ppl_ratio (2^(bpb ours - bpb GPT-2's)),
    bpb_ratio, lm (steps, token ppl, loss), tokenizer_stats
    (fertility, byte_fallback_share), cleaning. `sabotage` "wrong_data_tokenizer": ours trained on junk with a
    384-piece vocabulary (256 of them byte pieces)."""
    from impl.w19_data import run

    with runs.exclusive():
        return run.run(spec, runs, w01_training_parts(), progress, sabotage)


def w19_load_sentencepiece(model_file):
    """Our SentencePiece model as an encoder (a corrupt file: one TokenizerError)."""
    from impl.w19_data.tokenizer import load_sentencepiece

    return load_sentencepiece(model_file)


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
    """(numbers checked, mismatches) of a built site against the records it cites: the scorecard.json it was
    built from (`site.source`), unless another is given; the site's own copy only for a site whose source is
    unknown (loaded from disk)."""
    import json
    from pathlib import Path

    from impl.w23_portfolio import check
    from impl.w23_portfolio import site as site_mod

    source = Path(scorecard_path or site.source or Path(site.path) / site_mod.SOURCE_DIR / "scorecard.json")
    card = json.loads(source.read_text())
    history = site_mod.load_history(source.with_name("history.jsonl"))
    return check.numbers_mismatched(site.path, card, history)


def w23_evidence(spec):
    """The spec's interviews YAML, validated (a missing file is no evidence yet)."""
    from impl.w23_portfolio.evidence import load_evidence

    return load_evidence(spec.path(spec.interviews))


from impl.w23_portfolio.check import BrowserMissing as w23_BrowserMissing  # noqa: E402 (no selenium at import)
