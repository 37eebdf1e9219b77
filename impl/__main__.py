"""llm-milestones command line.

    python -m impl profiles                   # profiles, and whether this machine satisfies each
    python -m impl fetch [NAME ...]           # obtain, verify and cache fixture data and models
    python -m impl fetch --check [--lock]     # is every pinned archive (and locked package) still served?
    python -m impl lock [--check]             # regenerate requirements-cpu.lock from this venv / compare them
    python -m impl train w01 --profile cpu    # train a milestone outside pytest, with a progress bar
    python -m impl train w03 --profile cpu    # w03's three runs: classifier, causal-LM fine-tune, MLM
    python -m impl train w05 --profile cpu    # the DeepSpeed ZeRO-2 run on 2 processes (torchrun)
    python -m impl train w07 --profile cpu    # LoRA and QLoRA instruction tuning, ROUGE-L before/after
    python -m impl train w09 --profile cpu    # quantise w07's model (int8, nf4) and measure it; one load test
    python -m impl train w11 --profile cpu    # RAG: index the paragraphs, answer questions (closed-book, RAG, oracle)
    python -m impl train w15 --profile cpu    # lm-eval: 3 models x 5 BIG-bench tasks, the comparison report
    python -m impl train w17 --profile cpu    # RLHF: SFT policy, reward model (TRL), PPO, judged win rate vs SFT
    python -m impl train w19 --profile cpu    # datatrove cleaning + dedup, SentencePiece vs GPT-2 BPE in bits per byte
    python -m impl serve --model DIR          # an OpenAI-compatible server on 127.0.0.1:8000 (see --help)
    python -m impl calibrate w01 --profile cpu --seeds 0,1,2   # suggest thresholds for your machine
    python -m impl portfolio [--check]        # the portfolio site (w23) from reports/scorecard.json -> reports/site/
    python -m impl report                     # rebuild reports/scorecard.{md,html} from scorecard.json
    python -m impl report --merge DIR ...     # fold other machines' reports/ (the nightly GPU artifact) in
    python -m impl test                       # the whole suite: fast tests + cpu checks, timing ones, portfolio
    python -m impl deploy render --profile multinode   # w21: TrainJob, Indexed Job + Service, hostfile, launch.sh
    python -m impl deploy run --profile cpu   # w21: a two-host ZeRO-2 run on two network namespaces (root)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from impl.core.errors import MilestonesError
from impl.core.registry import MILESTONES


def cmd_profiles(args) -> int:
    from impl.core.profiles import builtin_profiles, load_profile

    for name in builtin_profiles():
        p = load_profile(name)
        missing = p.hardware_missing()
        print(f"{p.name:10} {'ok' if not missing else 'unavailable: ' + missing}")
        print(f"{'':10} {p.description}; milestones: {', '.join(p.milestones()) or '-'}")
    return 0


def cmd_fetch(args) -> int:
    from impl.core.fixtures import check_served, fetch_all, sources, table

    names = args.names or list(sources())
    if args.check:
        from concurrent.futures import ThreadPoolExecutor

        from impl.core.lock import check_lock_served

        with ThreadPoolExecutor(max_workers=1) as pool:  # the lock's one long pip query beside the fixtures' ones
            lock_future = pool.submit(check_lock_served) if args.lock else None
            rows = check_served(names)
            lock_rows = lock_future.result() if lock_future else []
        print(table(rows, ["fixture", "source", "status", "needed_by", "detail"]))
        gone = [r for r in rows if r["status"] != "served"]
        if args.lock:
            gone += lock_rows
            print(f"\nlocked packages: {len(lock_rows)} of them not served" + "".join(
                f"\n  {r['source']}: {r['detail']}" for r in lock_rows))
        for r in gone:
            print(f"NOT SERVED: {r['source']} ({r['fixture']}): {r['detail']}", file=sys.stderr)
        return 1 if gone else 0
    rows = fetch_all(names)
    print(table(rows, ["fixture", "source", "status", "needed_by"]))
    missing = [r for r in rows if r["status"] != "ok"]
    for r in missing:
        print(f"MISSING {r['fixture']} (needed by {', '.join(r['needed_by'])}): {r['error']}", file=sys.stderr)
    return 1 if missing else 0


def cmd_lock(args) -> int:
    from impl.core import lock

    return lock.main(["--check"] if args.check else [])


def cmd_train(args) -> int:
    from impl.core.artifacts import Runs
    from impl.core.profiles import load_profile

    ms = MILESTONES[args.milestone]
    profile = load_profile(args.profile)
    spec = profile.milestone(args.milestone)
    train = TRAINERS.get(args.milestone)
    if args.milestone == "w23":
        raise MilestonesError("w23 trains nothing: build the portfolio site with `python -m impl portfolio`")
    if train is None:
        raise MilestonesError(f"milestone {args.milestone} ({ms.title}) is not implemented yet")
    result = train(spec, Runs(ms.id, profile.name, reuse=args.reuse_artifacts), profile)
    for k, v in result.metrics.items():
        if not isinstance(v, (dict, list)):
            print(f"{k}: {v}")
    print(f"artifacts: {result.run_dir}")
    return 0


def _train_w01(spec, runs, profile):
    from impl import adapters

    return adapters.w01_train(spec, runs, progress=True)


def _train_w03(spec, runs, profile):
    from impl import adapters
    from impl.core.artifacts import RunResult

    results = {"classifier": adapters.w03_classifier(spec, runs, progress=True),
               "clm": adapters.w03_clm(spec, runs, progress=True), "mlm": adapters.w03_mlm(spec, runs, progress=True)}
    metrics = {f"{name} {k}": v for name, r in results.items() for k, v in r.metrics.items()}
    return RunResult(results["mlm"].run_dir.parents[2], metrics)


def _train_w05(spec, runs, profile):
    from impl import adapters

    return adapters.w05_train(spec, runs)


def _train_w07(spec, runs, profile):
    from impl import adapters
    from impl.core.artifacts import RunResult

    results = {v: adapters.w07_tune(spec, runs, v, progress=True) for v in ("lora", "qlora")
               if f"{v}_rougeL" in spec.targets}
    metrics = {f"{v} {k}": val for v, r in results.items() for k, val in r.metrics.items()}
    return RunResult(next(iter(results.values())).run_dir.parent, metrics)


def _train_w09(spec, runs, profile):
    from impl import adapters
    from impl.core.artifacts import RunResult
    from impl.w09_serve.quantize import table_markdown

    model = adapters.w09_model(spec, profile, runs)
    q = adapters.w09_quantize(spec, model, runs)
    print(table_markdown(q.metrics))
    load = adapters.w09_serve_under_load(spec, model, q.run_dir / "load")
    return RunResult(q.run_dir, {f"load {k}": v for k, v in load.items()})


def _train_w11(spec, runs, profile):
    from impl import adapters

    r = adapters.w11_rag(spec, runs, progress=True)
    m = r.metrics
    print(f"F1 closed-book {m['closed_book_f1']:.3f} < RAG {m['f1']:.3f} <= oracle {m['oracle_f1']:.3f}; "
          f"recall@{m['k']} dense {m['recall_at_k']:.3f}, BM25 {m['bm25_recall_at_k']:.3f}, random "
          f"{m['random_recall_at_k']:.3f}")
    return r


def _train_w15(spec, runs, profile):
    from impl import adapters

    r = adapters.w15_evaluate(spec, profile, runs)
    print(r.metrics["report"])
    if r.metrics.get("protocol"):
        p = r.metrics["protocol"]
        print(f"protocol check ({p['task']}, {p['model']}): harness acc {p['harness_acc']:.4f}, recomputed "
              f"{p['our_acc']:.4f} over {p['items']} items")
    return r


def _train_w17(spec, runs, profile):
    from impl import adapters

    r = adapters.w17_rlhf(spec, runs, progress=True)
    m = r.metrics
    print(f"reward model held-out pair accuracy {m['pair_accuracy']:.3f}; RLHF vs SFT: win rate {m['win_rate']:.3f} "
          f"({m['wins']} wins, {m['losses']} losses, {m['ties']} ties; VADER's second opinion "
          f"{m['lexicon_win_rate']:.3f}), fluency drop {m['fluency_drop']:.3f} "
          f"nats/token, diversity {m['diversity']:.3f}, KL to the SFT policy {m['kl_to_reference']:.2f} nats")
    return r


def _train_w19(spec, runs, profile):
    from impl import adapters

    r = adapters.w19_tokenizers(spec, runs, progress=True)
    m = r.metrics
    for s in m["cleaning"]["report"]["stages"]:
        print(f"{s['stage']}: {s['docs_in']:,} docs in, {s['docs_out']:,} out")
    print(f"bits per byte: ours {m['bpb']['sentencepiece']:.4f} vs GPT-2 BPE {m['bpb']['gpt2_bpe']:.4f} "
          f"(per-byte perplexity ratio {m['byte_ppl_ratio']:.3f}); cleaned dataset {m['dataset']['dir']}")
    return r


def _train_w21(spec, runs, profile):  # w21: the two-host run (as `python -m impl deploy run`); needs root
    from pathlib import Path

    from impl import adapters
    from impl.core.artifacts import RunResult

    p = adapters.w21_two_host_parity(spec, runs)
    print(p["scaling_note"])
    two = p["two_host"]
    return RunResult(Path(two["run_dir"]), {"max_loss_diff_vs_1_host": p["max_loss_diff"],
                                            "tokens_per_s_1_host": p["single_host"]["train_tokens_per_s"],
                                            "tokens_per_s_2_hosts": two["train_tokens_per_s"],
                                            "scaling_efficiency": p["scaling_efficiency"],
                                            "final_train_loss": two["final_train_loss"]})


TRAINERS = {"w01": _train_w01, "w03": _train_w03, "w05": _train_w05, "w07": _train_w07, "w09": _train_w09,
            "w11": _train_w11, "w15": _train_w15, "w17": _train_w17, "w19": _train_w19, "w21": _train_w21}


def cmd_calibrate(args) -> int:
    from impl.core.calibration import main_args

    return main_args(args.milestone, args.profile, args.seeds, args.reuse_artifacts)


def cmd_serve(args) -> int:
    import os

    from impl.w09_serve.server import serve

    serve(args.model, args.host, args.port, args.backend, args.quantization, args.dtype,
          args.api_key or os.environ.get("LLM_MILESTONES_API_KEY") or None, args.max_batch_size, args.batch_wait_ms,
          args.max_prompt_tokens, args.max_tokens_limit, args.name, args.max_body_bytes, args.batching,
          args.max_queue)
    return 0


def cmd_report(args) -> int:
    from impl.core import scorecard

    if args.merge:
        try:
            path, n = scorecard.merge(args.merge)
        except ValueError as e:
            raise MilestonesError(str(e)) from None
        print(f"merged {n} rows from {', '.join(map(str, args.merge))} into {path} (md and html rebuilt)")
        return 0
    card = scorecard.load()
    scorecard.render(card, scorecard.reports_dir())
    print(f"rebuilt {scorecard.reports_dir()}/scorecard.md and scorecard.html from scorecard.json")
    return 0


def _build_portfolio(spec, source: Path, out: Path):
    """Build the site and say what it holds (`portfolio`, and `test` after w23's checks)."""
    from impl import adapters
    from impl.w23_portfolio.evidence import distinct_interviews

    site = adapters.w23_build(spec, source, out)
    print(f"built {len(site.pages)} pages ({site.numbers} numbers cited from {site.rows} scorecard rows, "
          f"{len(distinct_interviews(site.evidence))} of {spec.required_interviews} mock interviews) into {site.path}")
    return site


def _number_problems(site) -> list[str]:
    """The site's numbers against the scorecard it was built from, each problem printed."""
    from impl import adapters

    checked, mismatched = adapters.w23_numbers(site, site.source)
    for line in mismatched:
        print(f"  {line}")
    print(f"numbers: {checked} checked against {site.source}, {len(mismatched)} mismatched")
    return mismatched


def cmd_portfolio(args) -> int:
    """Build the portfolio site (MkDocs, Material theme, offline) from the scorecard, its history and the interviews
    YAML; --check also opens every page in headless Chromium and compares every number with its record."""
    from impl import adapters
    from impl.core import scorecard
    from impl.core.profiles import load_profile, override

    spec = load_profile(args.profile).milestone("w23")
    if args.interviews:
        spec = override(spec, interviews=str(args.interviews.resolve()))
    source = args.scorecard or scorecard.reports_dir() / "scorecard.json"
    out = args.out or source.parent / "site"
    site = _build_portfolio(spec, source, out)
    print(f"open {site.path / 'index.html'}")
    if not args.check:
        return 0
    mismatched = _number_problems(site)
    browsed = adapters.w23_browse(spec, site, out.parent / "w23_index.png")
    for line in [*browsed["console_errors"], *browsed["broken_links"], *browsed["broken_images"]]:
        print(f"  {line}")
    print(f"browser: {browsed['pages']} pages, {len(browsed['console_errors'])} console errors, "
          f"{len(browsed['broken_links'])} broken links, {len(browsed['broken_images'])} broken images; "
          f"screenshot {browsed['screenshot']}")
    return 0 if not mismatched and not adapters.w23_problems(browsed) else 1


PORTFOLIO_PHASE = "w23 portfolio, after the rest"


def suite_phases(selection: str | None, workers: int) -> list[tuple[str, list[str]]]:
    """pytest's runs under `python -m impl test`, in order, as (name, options). What times nothing runs on every
    core; the timing checks alone; w23's checks last and alone, since the site they build and check must show
    every row of this run, and the scorecard holds a run's rows only once its pytest session has ended."""
    selected = f"({selection}) and " if selection else ""
    xdist = ["-n", str(workers), "--dist", "loadgroup", "--no-loadscope-reorder"] if workers > 1 else []
    return [("not timing, pytest-xdist" if workers > 1 else "not timing",
             xdist + ["-m", f"{selected}not timing and not w23"]),
            ("timing, alone on the cores", ["-m", f"{selected}timing and not w23"]),
            (PORTFOLIO_PHASE, ["-m", f"{selected}w23"])]


def _run_phase(name: str, opts: list[str], passthrough: list[str]) -> dict:
    """One pytest run: its name, seconds, exit status and counts (the suite's plugin writes them)."""
    import json
    import os
    import subprocess
    import tempfile
    import time

    with tempfile.NamedTemporaryFile(suffix=".json") as counts:
        env = {**os.environ, "LLM_MILESTONES_TEST_COUNTS": counts.name}
        print(f"== python -m impl test: {name}: pytest {' '.join(opts + passthrough)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", "pytest", *opts, *passthrough], env=env).returncode
        seconds = time.monotonic() - t0
        text = open(counts.name).read()
    return {"phase": name, "seconds": round(seconds), "rc": rc, "counts": json.loads(text) if text else {}}


def _reports_dir(passthrough: list[str]) -> Path:
    """Where this run's pytest writes the scorecard: a --reports-dir passed through, else the default."""
    from impl.core import scorecard

    for i, arg in enumerate(passthrough):
        if arg == "--reports-dir" and i + 1 < len(passthrough):
            return Path(passthrough[i + 1])
        if arg.startswith("--reports-dir="):
            return Path(arg.split("=", 1)[1])
    return scorecard.reports_dir()


def _publish_portfolio(passthrough: list[str]) -> int:
    """The site once more, from the scorecard as the run left it, so that it shows w23's own rows too (as
    `python -m impl portfolio` builds it: the cpu profile's w23 section), and its numbers checked. 0: published
    and right; 1: a number is wrong; 2: it could not be built."""
    from impl.core.profiles import load_profile

    reports = _reports_dir(passthrough)
    spec = load_profile("cpu").milestone("w23")
    source = spec.path(spec.scorecard) if spec.scorecard else reports / "scorecard.json"
    print("== python -m impl test: the portfolio site again, with w23's own rows", flush=True)
    try:
        site = _build_portfolio(spec, source, spec.site_path(reports))
    except MilestonesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if _number_problems(site) else 0


def cmd_test(args, passthrough: list[str]) -> int:
    """The whole test suite in three phases (see suite_phases): everything whose result does not depend on speed,
    on all cores (pytest-xdist, one worker per core, one thread each; a milestone's checks and a test module stay
    on one worker); the timing checks and the benchmarks alone on the machine, since a speed measured beside
    other work is worthless; then w23's portfolio checks, on the scorecard the other two phases wrote, and the
    site published again with w23's rows. Exit status: the first failing phase's."""
    import os
    import time

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    results = []
    for name, opts in suite_phases(args.m, workers):
        result = _run_phase(name, opts, passthrough)
        ran = result["counts"].get("passed", 0) + result["counts"].get("failed", 0)
        if name == PORTFOLIO_PHASE and ran:  # a site was built and checked: publish it with w23's rows
            t0 = time.monotonic()
            published = _publish_portfolio(passthrough)
            result["seconds"] += round(time.monotonic() - t0)
            result["rc"] = result["rc"] or published
        results.append(result)
    return _summarise(results, args.summary)


def _summarise(results: list[dict], summary: Path | None) -> int:
    """The phases' table (and the JSON .ci/run reads: `phases`, `total`); the exit status."""
    import json

    total = {k: sum(r["counts"].get(k, 0) for r in results)
             for k in ("passed", "failed", "skipped", "error", "xfailed")}
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps({"phases": results, "total": total}, indent=1))
    print("== python -m impl test: phases")
    for r in results:
        c = r["counts"]
        print(f"{r['phase']:30} {r['seconds']:6d} s  rc {r['rc']}  {c.get('passed', 0)} passed, "
              f"{c.get('failed', 0) + c.get('error', 0)} failed, {c.get('skipped', 0)} skipped")
    print(f"tests: {total['passed']} passed, {total['failed'] + total['error']} failed, {total['skipped']} skipped"
          + (f", {total['xfailed']} expected failures (FAIL rows only a person can make good)"
             if total["xfailed"] else ""))
    codes = [r["rc"] for r in results]
    if all(c == 5 for c in codes):
        return 5  # nothing selected in any phase
    return next((c for c in codes if c not in (0, 5)), 0)


def _select_impl(args) -> None:
    from impl import units

    if getattr(args, "impl", None) is not None:
        units.select(args.impl, args.impl_fallback)


def cmd_units(args) -> int:
    """Each unit of the milestones against its snapshot (the reference's, or the learner's package with --impl)."""
    from impl import units
    from impl.units import check

    milestones = (args.m,) if args.m else units.MILESTONES
    for m in milestones:
        units.catalogue(m)  # an unknown milestone: one clear error before anything runs
    if args.update_snapshots:
        if units.selected() is not None:
            raise units.UnitError("snapshots come from the reference only: run --update-snapshots without --impl")
        for m in milestones:
            print(f"wrote {check.update_snapshots(m)}")
        return 0
    lines, ok = check.table(milestones)
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_learner(args) -> int:
    from impl.units.learner import init

    written = init(args.dir)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} file(s) written in {args.dir} (existing ones are left as they are); next: "
          f"python -m impl units --impl {args.dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from impl.core.calibration import __doc__ as calibrate_doc
    from impl.w09_serve.server import __doc__ as serve_doc

    parser = argparse.ArgumentParser(prog="python -m impl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("profiles", help="list hardware profiles").set_defaults(func=cmd_profiles)
    lk = sub.add_parser("lock", help="regenerate requirements-cpu.lock from this venv, or --check it")
    lk.add_argument("--check", action="store_true", help="exit 1 naming each difference between the venv and the lock")
    lk.set_defaults(func=cmd_lock)
    f = sub.add_parser("fetch", help="obtain and cache fixture data and models")
    f.add_argument("names", nargs="*")
    f.add_argument("--check", action="store_true",
                   help="ask each registry whether every source is still served (downloads no archive)")
    f.add_argument("--lock", action="store_true",
                   help="with --check: also every package version pinned in the environment's lock file")
    f.set_defaults(func=cmd_fetch)
    t = sub.add_parser("train", help="train one milestone under a profile")
    t.add_argument("milestone", choices=list(MILESTONES), metavar="MILESTONE")
    t.add_argument("--profile", required=True, help="profile name or YAML path")
    t.add_argument("--reuse-artifacts", action="store_true")
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("calibrate", help="run a milestone's checks over seeds and suggest each threshold",
                       description=calibrate_doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("milestone", choices=list(MILESTONES), metavar="MILESTONE")
    c.add_argument("--profile", required=True, help="profile name or YAML path")
    c.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    c.add_argument("--reuse-artifacts", action="store_true", help="reuse complete runs of the same seeded config")
    c.set_defaults(func=cmd_calibrate)
    v = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description=serve_doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--model", required=True, help="model directory, hub id or fixture:NAME")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    v.add_argument("--quantization", default="none", help="transformers: none | int8 | nf4; vllm: its --quantization")
    v.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    v.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or LLM_MILESTONES_API_KEY)")
    v.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                   help="transformers: requests join and leave the running batch at each step, or static batches")
    v.add_argument("--max-batch-size", type=int, default=8, help="requests generated at once")
    v.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; more get 429")
    v.add_argument("--batch-wait-ms", type=float, default=10.0, help="static: how long a batch waits for company")
    v.add_argument("--max-prompt-tokens", type=int, default=512)
    v.add_argument("--max-tokens-limit", type=int, default=256)
    v.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="larger request bodies get 413")
    v.add_argument("--name", default=None, help="the model name clients send (default: --model)")
    v.set_defaults(func=cmd_serve)
    r = sub.add_parser("report", help="rebuild the scorecard from its JSON, or merge other machines' reports into it")
    r.add_argument("--merge", nargs="+", type=Path, metavar="PATH",
                   help="reports/ directories or scorecard.json files of other machines (the nightly GPU artifact)")
    r.set_defaults(func=cmd_report)
    po = sub.add_parser("portfolio", help="build the portfolio site (w23) from the scorecard",
                        description=cmd_portfolio.__doc__)
    po.add_argument("--scorecard", type=Path, default=None, help="scorecard.json (default: reports/scorecard.json)")
    po.add_argument("--out", type=Path, default=None, help="the site's directory (default: site/ beside the scorecard)")
    po.add_argument("--interviews", type=Path, default=None, help="the interviews YAML (default: the profile's)")
    po.add_argument("--profile", default="cpu", help="the profile whose w23 section to use (default cpu)")
    po.add_argument("--check", action="store_true", help="also check the site in headless Chromium and its numbers")
    po.set_defaults(func=cmd_portfolio)
    te = sub.add_parser("test", help="the whole test suite: what times nothing on all cores, then timing alone, "
                                     "then w23's portfolio of the run",
                        description=cmd_test.__doc__)
    te.add_argument("-m", default=None, help="a marker expression, combined with each phase's")
    te.add_argument("--workers", type=int, default=None, help="pytest-xdist workers (default: one per core)")
    te.add_argument("--summary", type=Path, default=None, help="also write the phases' times and counts as JSON")
    te.set_defaults(func=cmd_test)
    un = sub.add_parser("units", help="each unit (attention, AdamW, ...) against its snapshot: pass / fail / not "
                                      "implemented", description=cmd_units.__doc__)
    un.add_argument("-m", default=None, metavar="MILESTONE", help="one milestone's units (default: all)")
    un.add_argument("--update-snapshots", action="store_true", help="write the reference's outputs as the snapshots")
    le = sub.add_parser("learner", help="a learner's package of unit stubs: python -m impl learner init DIR")
    le.add_argument("action", choices=["init"])
    le.add_argument("dir", type=Path)
    le.set_defaults(func=cmd_learner)
    for command in (t, c, un):  # what runs a learner's units: select their package
        command.add_argument("--impl", type=Path, default=None,
                             help="a learner's package (python -m impl learner init DIR) whose written units replace "
                                  "the reference's")
        command.add_argument("--impl-fallback", action="store_true",
                             help="with --impl: use the reference for the units the package leaves as stubs")
    un.set_defaults(func=cmd_units)
    from impl.w21_infra.cli import add_deploy_parser  # w21: python -m impl deploy render|build|run

    add_deploy_parser(sub)
    args, passthrough = parser.parse_known_args(argv)
    if passthrough and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(passthrough)}")
    try:
        _select_impl(args)
        return args.func(args, passthrough) if args.command == "test" else args.func(args)
    except KeyboardInterrupt:
        print("interrupted; an unfinished run resumes from its last checkpoint next time", file=sys.stderr)
        return 130
    except (MilestonesError, FileNotFoundError) as e:  # our errors: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
