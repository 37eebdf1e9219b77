"""The suite's pytest plugin: profiles as parameters and markers, artifacts, and the scorecard.

An acceptance check is a test marked `@pytest.mark.check("w01", target="val_ppl")`. It is collected once per
profile whose milestone section defines that target, carrying the markers `w01` and the profile's name, so

    pytest acceptance -m "w01 and cpu"          # w01's cpu checks
    pytest acceptance --profile my/card.yaml    # a user's own profile (its name becomes a marker too)

Its fixtures: `spec` (the validated milestone section), `runs` (artifact directories for this milestone and
profile; --reuse-artifacts reuses complete ones) and `scorecard` (asserts a target and records the row).
Every acceptance check leaves one row, whatever its outcome; the session writes reports/ at its end, also when
interrupted, and under pytest-xdist the controller merges the workers' rows.
"""
from __future__ import annotations

import json
import os
import platform
import time
import uuid
from pathlib import Path

import pytest

from impl import units
from impl.core import scorecard as card
from impl.core.artifacts import Runs, environment
from impl.core.errors import MilestonesError
from impl.core.profiles import Profile, ProfileError, builtin_profiles, load_profile, with_seed

ROWS_DIR = ".rows"


def pytest_addoption(parser):
    g = parser.getgroup("llm-milestones")
    g.addoption("--profile", action="append", default=[],
                help="hardware profile name or YAML path (repeatable; default: every profile in hardware_profiles/)")
    g.addoption("--reuse-artifacts", action="store_true",
                help="reuse a complete training run with the same config instead of training again")
    g.addoption("--reports-dir", default=None, help="where to write the scorecard (default: reports/)")
    g.addoption("--impl", default=None, help="a learner's package of units (python -m impl learner init DIR): its "
                                              "written units replace the reference's, in unit tests and checks")
    g.addoption("--impl-fallback", action="store_true",
                help="with --impl: the reference stands in for the units the package leaves as stubs")


def pytest_configure(config):
    config.addinivalue_line("markers", "check(milestone, target): an acceptance check of one milestone target")
    try:
        profiles = [load_profile(p) for p in (config.getoption("profile") or builtin_profiles())]
    except ProfileError as e:
        raise pytest.UsageError(str(e)) from None
    for p in profiles:  # a user's profile becomes a marker too, so -m NAME selects it under --strict-markers
        config.addinivalue_line("markers", f"{p.name}: hardware profile {p.path}")
    config._milestone_profiles = profiles
    if config.getoption("impl"):  # before any check runs; the env carries it into every process a check starts
        try:
            units.select(config.getoption("impl"), config.getoption("impl_fallback"))
        except units.UnitError as e:
            raise pytest.UsageError(str(e)) from None
    _register_grouping(config)
    config._reports = Path(config.getoption("reports_dir") or card.reports_dir())
    worker = getattr(config, "workerinput", None)
    config._session_id = worker["milestones_session"] if worker else uuid.uuid4().hex[:12]
    config._worker = worker["workerid"] if worker else "main"
    if worker:  # share the cores between the workers instead of oversubscribing them (and the ranks they launch)
        threads = max(1, (os.cpu_count() or 1) // int(worker.get("workercount", 1)))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # xdist controller -> each worker: one session id for the rows files
    node.workerinput["milestones_session"] = node.config._session_id


# The order in which pytest-xdist hands out work: the longest groups first, so two workers finish together.
# w09's and w15's checks reuse w07's tuned model, so they run on w07's worker, after it; w15 also reads w01's GPT,
# so w01 goes first on the other worker and is done before w15 asks for it (else w15 trains a copy of its own).
# w17's, w11's and w19's twins run on their check's worker, after it, and reuse the stages it made (Runs(share=True)).
XDIST_ORDER = ["acceptance:w07", "acceptance:w01", "acceptance:w17", "acceptance:w11", "acceptance:w03", "acceptance:w21",
               "acceptance:w05", "acceptance:w19", "acceptance:w13", "acceptance:w23"]  # w23 last: the portfolio reads the scorecard the others write
SHARES_W07_MODEL = ("w09", "w15")
TWINS_SHARING_THE_CHECKS_STAGES = {"tests/test_w17.py": "w17", "tests/test_w11.py": "w11", "tests/test_w19.py": "w19"}


def xdist_group(nodeid: str) -> str:
    """What must run on one worker, from the node id alone (the xdist controller sees only node ids): an acceptance
    milestone's checks (one run read by several checks; w09's and w15's read w07's model) and the twins reusing
    their stages, or a test module's tests (module-scoped fixtures: a server, a model)."""
    path = nodeid.split("::")[0]
    name = Path(path).name
    if Path(path).parent.name == "acceptance" and name.startswith("test_w"):
        milestone = name[len("test_"):len("test_w01")]
        return "acceptance:" + ("w07" if milestone in SHARES_W07_MODEL else milestone)
    if path in TWINS_SHARING_THE_CHECKS_STAGES:
        return "acceptance:" + TWINS_SHARING_THE_CHECKS_STAGES[path]
    return path


class MilestoneScheduling:
    """pytest-xdist's scheduler for this suite, through xdist's own `pytest_xdist_make_scheduler` hook: whole
    groups (`xdist_group`) go to one worker whatever `--dist` says, since a milestone's checks split over two
    workers race for one run directory. Work units are handed out in collection order, which the suite sorts by
    XDIST_ORDER. `-p no:llm_milestones_grouping` turns it off (xdist's own modes then apply)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config, log):
        from xdist.scheduler import LoadScopeScheduling

        if config.getvalue("dist") == "each":  # every test on every worker: there is nothing to group
            return None

        class Scheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:  # the one method LoadScopeScheduling asks subclasses for
                return xdist_group(nodeid)

        return Scheduling(config, log)


def _register_grouping(config) -> None:
    if config.pluginmanager.hasplugin("xdist"):  # register() refuses the name quietly when -p no: blocked it
        config.pluginmanager.register(MilestoneScheduling(), "llm_milestones_grouping")


def pytest_collection_modifyitems(config, items):
    """Longest groups first (see XDIST_ORDER); within a group the acceptance checks first (twins reuse their
    stages), else collection order (a stable sort)."""
    rank = {g: i for i, g in enumerate(XDIST_ORDER)}
    items.sort(key=lambda i: (rank.get(xdist_group(i.nodeid), len(rank)), not i.nodeid.startswith("acceptance/")))


def pytest_generate_tests(metafunc):
    mark = metafunc.definition.get_closest_marker("check")
    if mark is None:
        return
    milestone, target = mark.args[0], mark.kwargs["target"]
    params = []
    for p in metafunc.config._milestone_profiles:
        if milestone in p.milestones() and target in p.milestone(milestone).targets:
            params.append(pytest.param(p, id=p.name, marks=[getattr(pytest.mark, milestone), getattr(pytest.mark, p.name)]))
    metafunc.parametrize("profile", params)


class Scorecard:
    """What one check records; the plugin turns it into a row when the test ends.

    A check whose target asks for several seeds loops `for s in scorecard.each_seed(spec)` and calls `check` once
    per seed; the row records every seed's value and is gated on the worst one.
    """

    def __init__(self, milestone: str, target_name: str, spec):
        self.milestone, self.target_name, self.target = milestone, target_name, spec.targets[target_name]
        self.value, self.data, self.curve, self.extra = None, None, None, {}
        self.seed, self.per_seed = None, {}  # seed -> (checked value, data, curve, extra)

    def each_seed(self, spec):
        """The spec once per seed the target asks for (every `seed` field set to it), or once as it is."""
        if not self.target.seeds:
            yield spec
            return
        for seed in self.target.seeds:
            self.seed = seed
            yield with_seed(spec, seed)

    def check(self, value: float, data: str, curve: list | None = None, baselines: dict | None = None,
              trivial: dict | None = None, **extra) -> None:
        """Record the measured value with its data and context, then assert the target. A relative target
        judges the value against the baselines measured in the same run (recorded beside it). `trivial` names a
        no-skill reference of an absolute target (the unigram model), recorded for calibration, never gated on."""
        if self.target.seeds and self.seed is None:
            raise MilestonesError(f"{self.milestone} {self.target_name}: the profile asks for seeds "
                                  f"{self.target.seeds}, but this check does not loop over scorecard.each_seed(spec)")
        extra = dict(extra)
        if baselines:
            extra.update({self.target_name: float(value), **{f"baseline {k}": v for k, v in baselines.items()}})
        extra.update({f"trivial {k}": v for k, v in (trivial or {}).items()})
        checked = float(self.target.checked_value(float(value), baselines))
        self.per_seed[self.seed] = (checked, data, curve, extra)
        if self.seed is not None and len(self.per_seed) < len(self.target.seeds):
            return  # more seeds to come: the last one decides
        values = {s: v[0] for s, v in self.per_seed.items()}
        worst = self.target.worst(list(values.values()))
        worst_seed = next(s for s, v in values.items() if v == worst or v != v)  # NaN is the worst of all
        self.value, self.data, self.curve, chosen = self.per_seed[worst_seed]
        self.extra.update(chosen)
        if self.seed is not None:
            self.extra.update({"value per seed": values, "worst seed": worst_seed})
        assert self.target.passes(self.value), (
            f"{self.milestone} {self.target.label(self.target_name)} = {self.value:.4g}"
            f"{f' (worst of seeds {list(self.per_seed)})' if self.seed is not None else ''}, target "
            f"{self.target.describe()} ({self.target.protocol})")


@pytest.fixture
def spec(profile, request):
    reason = profile.hardware_missing()
    if reason:
        pytest.skip(f"profile {profile.name}: {reason}")
    return profile.milestone(request.node.get_closest_marker("check").args[0])


@pytest.fixture
def runs(profile, request):
    return Runs(request.node.get_closest_marker("check").args[0], profile.name,
                reuse=request.config.getoption("reuse_artifacts"))


@pytest.fixture
def scorecard(spec, request):
    mark = request.node.get_closest_marker("check")
    request.node._scorecard = Scorecard(mark.args[0], mark.kwargs["target"], spec)
    return request.node._scorecard


_ENV = None


def _row(item, outcome: str, message: str | None, duration: float, requirement_failed: bool = False) -> dict:
    global _ENV
    _ENV = _ENV or environment()
    mark = item.get_closest_marker("check")
    milestone, target_name = mark.args[0], mark.kwargs["target"]
    profile = item.callspec.params["profile"]
    target = profile.milestone(milestone).targets[target_name]
    rec: Scorecard | None = getattr(item, "_scorecard", None)
    status = {"passed": "pass", "skipped": "skip"}.get(outcome)
    if status is None:  # failed: the target or a requirement of the check was missed (fail), or it broke (error)
        measured = rec is not None and rec.value is not None
        status = "fail" if measured and (requirement_failed or not target.passes(rec.value)) else "error"
    hw = f"{_ENV['cpu_threads']} CPU thread(s)" + (f", {len(_ENV['gpus'])}x {_ENV['gpus'][0]}" if _ENV["gpus"] else "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # speeds in this row were measured while other checks ran beside it
        hw += f", {os.cpu_count()} cores shared by {workers} pytest-xdist workers"
    return {
        "milestone": milestone, "check": item.originalname, "profile": profile.name, "status": status,
        "title": (item.function.__doc__ or "").strip().split("\n")[0] or None,
        "order": list(profile.milestone(milestone).targets).index(target_name),  # the profile's order: headline first
        "metric": target.label(target_name), "direction": target.direction, "target": target.threshold,
        "value": rec.value if rec else None, "data": rec.data if rec else None, "protocol": target.protocol_text(),
        "hardware": hw, "versions": {k: _ENV[k] for k in ("python", "torch", "transformers") if k in _ENV},
        "host": platform.node(), "commit": _ENV["commit"], "duration_s": round(duration, 1), "message": message,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "extra": rec.extra if rec else {}, "curve": rec.curve if rec else None,
        "implementation": units.provenance(),  # whose code: the reference, or a learner's package and its units
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    callspec = getattr(item, "callspec", None)
    if item.get_closest_marker("check") is None or callspec is None or \
            not isinstance(callspec.params.get("profile"), Profile):
        return  # not a check, or a check no selected profile defines (pytest skips its empty parameter set)
    item._durations = getattr(item, "_durations", 0.0) + report.duration
    rec = getattr(item, "_scorecard", None)
    if report.when == "call" and report.passed and (rec is None or rec.value is None):
        # a check that ended without a value measured nothing (it never called scorecard.check, or left the
        # loop over scorecard.each_seed before its last seed): an error, in pytest and in the scorecard
        seeded = rec is not None and rec.target.seeds
        done = f" (seeds done: {sorted(rec.per_seed)} of {rec.target.seeds})" if seeded else ""
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: the check ended without recording a value{done}; every check measures "
                           f"through scorecard.check")
    # one row per check: at the end of the call, or at setup when it never got there (skip, error)
    if (report.when == "call") or (report.when == "setup" and not report.passed):
        message, outcome = None, report.outcome
        if report.failed:
            message = str(call.excinfo.value)[:2000] if call.excinfo else report.longreprtext[-2000:]
        elif hasattr(report, "wasxfail"):
            # a check that measured a shortfall only a person can make good (w23's mock interviews before anyone
            # recorded one): pytest reports it as an expected failure, the scorecard as the FAIL it is
            message, outcome = report.wasxfail.removeprefix("reason: "), "failed"
        elif report.skipped:
            message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        requirement_failed = report.when == "call" and call.excinfo is not None and \
            call.excinfo.errisinstance((AssertionError, pytest.xfail.Exception))  # the check's own, after measuring
        row = _row(item, outcome, message, item._durations, requirement_failed)
        rows = item.config._reports / ROWS_DIR / item.config._session_id
        rows.mkdir(parents=True, exist_ok=True)
        with open(rows / f"{item.config._worker}.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if getattr(config, "workerinput", None):
        return  # the controller merges
    rows_dir = config._reports / ROWS_DIR / config._session_id
    if not rows_dir.exists():
        return  # no acceptance check ran: leave the scorecard as it is
    rows = [json.loads(l) for f in sorted(rows_dir.glob("*.jsonl")) for l in f.read_text().splitlines() if l]
    path = card.write(rows, config._reports)
    for f in rows_dir.glob("*.jsonl"):
        f.unlink()
    rows_dir.rmdir()
    config._scorecard_path = path


def pytest_terminal_summary(terminalreporter, config):
    counts_file = os.environ.get("LLM_MILESTONES_TEST_COUNTS")  # `python -m impl test` adds up its phases
    if counts_file and not getattr(config, "workerinput", None):
        stats = terminalreporter.stats
        counts = {k: len(stats.get(k, [])) for k in ("passed", "failed", "skipped", "error", "xfailed")}
        Path(counts_file).write_text(json.dumps(counts))
    path = getattr(config, "_scorecard_path", None)
    if path:
        rows = json.loads(Path(path).read_text())["rows"]
        terminalreporter.write_sep("=", "scorecard")
        for r in rows:
            if r["status"] != "not-implemented":
                terminalreporter.write_line(
                    f"{r['status'].upper():6} {r['milestone']} {r['check']} [{r['profile']}] "
                    f"{r['metric']}={card.format_value(r['value'])} target {card.target_text(r)}")
        terminalreporter.write_line(f"written: {path.parent}/scorecard.{{json,md,html}}")
