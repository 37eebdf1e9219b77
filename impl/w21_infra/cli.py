"""`python -m impl deploy ...`: w21's deployment commands.

    python -m impl deploy render --profile multinode [--out DIR]   # manifests, hostfile, launch.sh; validated
    python -m impl deploy build --profile cpu [--flavor cuda] [--base-image python:3.11-slim-bookworm]
    python -m impl deploy run --profile cpu [--launcher deepspeed] [--fault]   # two namespaces as two hosts

`render` writes into deploy/k8s/rendered/<profile>/ unless --out says otherwise (generated, not committed: the
profile is the source). `run` needs root and iproute2 (network namespaces); it prints the two-host run's loss
parity with one host, tokens/s and scaling efficiency, and with --fault kills host 1 mid-run and resumes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from impl.core.errors import MilestonesError

RENDERED = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "rendered"


def _spec(profile_name: str):
    from impl.core.profiles import load_profile

    profile = load_profile(profile_name)
    if "w21" not in profile.milestones():
        raise MilestonesError(f"profile {profile.name} has no w21 section")
    return profile, profile.milestone("w21")


def cmd_render(args) -> int:
    from impl.w21_infra import manifests

    profile, spec = _spec(args.profile)
    out = args.out or RENDERED / profile.name
    rendered = manifests.render(spec, out)
    report = manifests.validate(spec, rendered)
    for name, path in rendered.files.items():
        print(f"{path}")
    print(f"validated {len(report['checked'])} objects (Kubernetes {report['kubernetes_version']}, {report['crd']}): "
          f"{len(report['invalid'])} invalid")
    for key, problems in report["invalid"].items():
        print(f"  {key}: {'; '.join(problems)}")
    return 1 if report["invalid"] else 0


def cmd_build(args) -> int:
    from impl.w21_infra import images

    _, spec = _spec(args.profile)
    info = images.build_image(spec, flavor=args.flavor, base_image=args.base_image)
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_run(args) -> int:
    from impl.core.artifacts import Runs
    from impl.core.profiles import override
    from impl.w21_infra import multihost

    profile, spec = _spec(args.profile)
    hosts = {k: v for k, v in (("launcher", args.launcher), ("master_port", args.master_port)) if v is not None}
    if hosts:
        spec = override(spec, hosts=hosts)
    runs = Runs("w21", profile.name, reuse=args.reuse_artifacts)
    p = multihost.parity(spec, runs)
    one, two = p["single_host"], p["two_host"]
    print(f"2 hosts x {p['nproc_per_host']} process(es) ({p['launcher']}, {p['network']}): {p['steps']} steps, "
          f"final loss {two['curve'][-1][1]:.4f}; 1 host: {one['curve'][-1][1]:.4f}; "
          f"max |loss diff| per step {p['max_loss_diff']:.2e}")
    print(f"tokens/s: 1 host {one['train_tokens_per_s']:.0f}, 2 hosts {two['train_tokens_per_s']:.0f}; "
          f"scaling efficiency {p['scaling_efficiency']:.2f}\n{p['scaling_note']}\nrun directory: {two['run_dir']}")
    if args.fault:
        f = multihost.fault_and_resume(spec, runs, two)
        print(f"host 1 killed after step {f['killed_after_step']}: host 0's launcher reported it in "
              f"{f['detect_seconds']:.1f} s ({f['launcher_error']}); resumed from step {f['resumed_from_step']}, "
              f"final loss differs from the uninterrupted run by {f['final_loss_diff']:.2e}")
    return 0


def add_deploy_parser(sub) -> None:
    d = sub.add_parser("deploy", help="w21: render cluster manifests, build the image, run a two-host job locally",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = d.add_subparsers(dest="deploy_command", required=True)
    r = dsub.add_parser("render", help="TrainJob, Indexed Job + headless Service, DeepSpeed hostfile, launch.sh")
    r.add_argument("--profile", required=True, help="profile name or YAML path (its w21.cluster section)")
    r.add_argument("--out", type=Path, default=None, help="output directory (default deploy/k8s/rendered/PROFILE)")
    r.set_defaults(func=cmd_render)
    b = dsub.add_parser("build", help="build the Docker image (deploy/docker/Dockerfile.FLAVOR)")
    b.add_argument("--profile", default="cpu", help="profile name or YAML path (its w21.container section)")
    b.add_argument("--flavor", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--base-image", default=None, help="BASE_IMAGE (default: a debootstrap bookworm base made here)")
    b.set_defaults(func=cmd_build)
    u = dsub.add_parser("run", help="a two-host DeepSpeed ZeRO-2 run on two network namespaces (root)")
    u.add_argument("--profile", default="cpu", help="profile name or YAML path (its w21 section)")
    u.add_argument("--launcher", choices=["torchrun", "deepspeed"], default=None)
    u.add_argument("--master-port", type=int, default=None)
    u.add_argument("--fault", action="store_true", help="also kill host 1 mid-run and resume from the checkpoint")
    u.add_argument("--reuse-artifacts", action="store_true")
    u.set_defaults(func=cmd_run)
