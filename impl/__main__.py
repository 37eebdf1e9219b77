"""llm-milestones command line.

    python -m impl profiles                   # profiles, and whether this machine satisfies each
    python -m impl fetch [NAME ...]           # obtain, verify and cache fixture data and models
    python -m impl train w01 --profile cpu    # train a milestone outside pytest, with a progress bar
    python -m impl train w03 --profile cpu    # w03's three runs: classifier, causal-LM fine-tune, MLM
    python -m impl train w05 --profile cpu    # the DeepSpeed ZeRO-2 run on 2 processes (torchrun)
    python -m impl train w07 --profile cpu    # LoRA and QLoRA instruction tuning, ROUGE-L before/after
    python -m impl report                     # rebuild reports/scorecard.{md,html} from scorecard.json
"""
from __future__ import annotations

import argparse
import sys

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
    from impl.core.fixtures import fetch, sources

    for name in args.names or list(sources()):
        fetch(name)
    return 0


def cmd_train(args) -> int:
    from impl.core.artifacts import Runs
    from impl.core.profiles import load_profile

    ms = MILESTONES[args.milestone]
    profile = load_profile(args.profile)
    spec = profile.milestone(args.milestone)
    train = TRAINERS.get(args.milestone)
    if train is None:
        raise MilestonesError(f"milestone {args.milestone} ({ms.title}) is not implemented yet")
    result = train(spec, Runs(ms.id, profile.name, reuse=args.reuse_artifacts))
    for k, v in result.metrics.items():
        if not isinstance(v, (dict, list)):
            print(f"{k}: {v}")
    print(f"artifacts: {result.run_dir}")
    return 0


def _train_w01(spec, runs):
    from impl import adapters

    return adapters.w01_train(spec, runs, progress=True)


def _train_w03(spec, runs):
    from impl import adapters
    from impl.core.artifacts import RunResult

    results = {"classifier": adapters.w03_classifier(spec, runs, progress=True),
               "clm": adapters.w03_clm(spec, runs, progress=True), "mlm": adapters.w03_mlm(spec, runs, progress=True)}
    metrics = {f"{name} {k}": v for name, r in results.items() for k, v in r.metrics.items()}
    return RunResult(results["mlm"].run_dir.parents[2], metrics)


def _train_w05(spec, runs):
    from impl import adapters

    return adapters.w05_train(spec, runs)


def _train_w07(spec, runs):
    from impl import adapters
    from impl.core.artifacts import RunResult

    results = {v: adapters.w07_tune(spec, runs, v, progress=True) for v in ("lora", "qlora")
               if f"{v}_rougeL" in spec.targets}
    metrics = {f"{v} {k}": val for v, r in results.items() for k, val in r.metrics.items()}
    return RunResult(next(iter(results.values())).run_dir.parent, metrics)


TRAINERS = {"w01": _train_w01, "w03": _train_w03, "w05": _train_w05, "w07": _train_w07}


def cmd_report(args) -> int:
    from impl.core import scorecard

    card = scorecard.load()
    scorecard.render(card, scorecard.reports_dir())
    print(f"rebuilt {scorecard.reports_dir()}/scorecard.md and scorecard.html from scorecard.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m impl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("profiles", help="list hardware profiles").set_defaults(func=cmd_profiles)
    f = sub.add_parser("fetch", help="obtain and cache fixture data and models")
    f.add_argument("names", nargs="*")
    f.set_defaults(func=cmd_fetch)
    t = sub.add_parser("train", help="train one milestone under a profile")
    t.add_argument("milestone", choices=list(MILESTONES), metavar="MILESTONE")
    t.add_argument("--profile", required=True, help="profile name or YAML path")
    t.add_argument("--reuse-artifacts", action="store_true")
    t.set_defaults(func=cmd_train)
    sub.add_parser("report", help="rebuild the scorecard from its JSON").set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; an unfinished run resumes from its last checkpoint next time", file=sys.stderr)
        return 130
    except (MilestonesError, FileNotFoundError) as e:  # our errors: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
