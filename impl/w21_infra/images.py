"""The w21 images: a base image made here, and the suite's image built on it.

    python -m impl deploy build --profile cpu          # base image (debootstrap) + the CPU image of the suite
    from impl.w21_infra import daemon, images
    with daemon.session() as d:
        info = images.build_image(spec, d)             # deploy/docker/Dockerfile.cpu, wheels from the host

Base image: no registry is reachable here, so `debootstrap --variant=minbase bookworm` with python3.11 from a
Debian mirror (LLM_MILESTONES_DEBIAN_MIRROR, default deb.debian.org) is imported with `docker import` as
llm-milestones-base:bookworm-py311 (~45 s once; kept, so a second run reuses it). Its apt caches are emptied first.
A mirror that does not answer within MIRROR_TIMEOUT_S is one clear error, and debootstrap is stopped after
DEBOOTSTRAP_TIMEOUT_S with whatever it mounted inside the root file system unmounted. On a machine with a
registry, `BASE_IMAGE=python:3.11-slim-bookworm` (the Dockerfiles' default) is used as is.

Build context: the Dockerfile, the image's lock, the wheels (impl/w21_infra/wheels.py) and the suite's files; the
image's tag carries the context's hash.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from impl.w21_infra.daemon import Docker, DockerError, connect, file_lock, release, tail
from impl.w21_infra.wheels import DOCKER_DIR, wheels_for

ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "llm-milestones-base:bookworm-py311"
IMAGE_REPO = "llm-milestones"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_TIMEOUT_S = 20
DEBOOTSTRAP_TIMEOUT_S = 900
# the files of the suite (besides impl/) the image needs: profiles, fixture sources, the package metadata
SUITE_FILES = ["pyproject.toml", "README.md", "hardware_profiles", "fixtures/sources.yaml"]


class BuildError(DockerError):
    pass


def mirror() -> str:
    return os.environ.get("LLM_MILESTONES_DEBIAN_MIRROR", DEFAULT_MIRROR).rstrip("/")


def ensure_base(d: Docker, tag: str = BASE_TAG, debian_mirror: str | None = None,
                timeout_s: float = DEBOOTSTRAP_TIMEOUT_S) -> dict:
    """The bookworm + python3.11 base image, made with debootstrap once and reused by tag."""
    with file_lock("base-image"):
        if d.image_exists(tag):
            return {"base_image": tag, "base_built_s": 0.0, "base_reused": True}
        exe = shutil.which("debootstrap")
        if exe is None:
            raise DockerError(f"base image {tag} is missing and `debootstrap` is not installed: as root, "
                              "`apt-get install -y debootstrap` (bootstrap.sh does), or build with "
                              "--base-image python:3.11-slim-bookworm where a registry is reachable")
        debian_mirror = (debian_mirror or mirror()).rstrip("/")
        check_mirror(debian_mirror)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="llmm-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            try:
                # python3.11 only: the Dockerfiles make their venv --without-pip and take pip from the wheels
                debootstrap([exe, "--variant=minbase", "--include=python3.11", "bookworm", str(rootfs),
                             debian_mirror], timeout_s)
            finally:
                unmount_below(rootfs)  # a stopped debootstrap leaves the chroot's /proc, /sys, /dev/pts mounted
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for f in (rootfs / junk).glob("*"):
                    if f.is_file():
                        f.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            try:
                d.cmd("import", "--change", 'CMD ["python3.11"]', "-", tag, stdin=tar.stdout, timeout=600)
            finally:
                tar.stdout.close()
                tar.wait()
        return {"base_image": tag, "base_built_s": round(time.monotonic() - t0, 1), "base_reused": False,
                "debian_mirror": debian_mirror}


def check_mirror(debian_mirror: str, timeout_s: float = MIRROR_TIMEOUT_S) -> None:
    """One clear error now, rather than debootstrap waiting on a mirror that never answers."""
    url = f"{debian_mirror}/dists/bookworm/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            return
    except Exception as e:  # URLError, a time-out, an HTTP error: all say the same to the user
        raise DockerError(f"the Debian mirror {debian_mirror} did not serve {url} within {timeout_s:.0f} s ({e}); "
                          "set LLM_MILESTONES_DEBIAN_MIRROR to a reachable mirror") from None


def debootstrap(cmd: list[str], timeout_s: float) -> None:
    """debootstrap in its own process group, so that a time-out stops it and the dpkg runs it started."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise DockerError(f"debootstrap of the base image did not finish within {timeout_s:.0f} s (stopped); its "
                          f"last lines:\n{tail(out, 15)}") from None
    if proc.returncode != 0:
        raise DockerError(f"debootstrap of the base image failed (exit {proc.returncode}): {tail(out, 15)}")


def unmount_below(root: Path) -> list[str]:
    """Unmount everything mounted at or below `root`, deepest first; returns what was unmounted."""
    prefix = str(root.resolve())
    mounts = Path("/proc/mounts").read_text().splitlines()
    mounted = [line.split()[1].encode().decode("unicode_escape") for line in mounts]  # "\\040" is a space
    mine = sorted((m for m in mounted if m == prefix or m.startswith(prefix + "/")), key=len, reverse=True)
    for m in mine:
        subprocess.run(["umount", "-l", m], capture_output=True)
    return mine


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "COMPLETE":
            try:
                os.link(f, dst / f.name)  # the torch wheel is 190 MB: link, do not copy
            except OSError:
                shutil.copy2(f, dst / f.name)


def build_context(dockerfile: Path, lock_file: Path, ctx: Path, host_wheels: bool = True) -> Path:
    """Assemble a build context: Dockerfile, requirements.txt (the lock), wheels/, src/ (the suite).
    host_wheels False (the CUDA image on a CPU host, which has no CUDA torch): wheels/ holds only a note, and the
    Dockerfile resolves the lock from the index."""
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dockerfile, ctx / "Dockerfile")
    shutil.copy2(lock_file, ctx / "requirements.txt")
    if host_wheels:
        _link_tree(wheels_for(lock_file), ctx / "wheels")
    else:
        (ctx / "wheels").mkdir()
        (ctx / "wheels" / "README").write_text("no host wheels: pip resolves requirements.txt from its index\n")
    src = ctx / "src"
    shutil.copytree(ROOT / "impl", src / "impl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in SUITE_FILES:
        p = ROOT / name
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, src / name)
    return ctx


def context_hash(ctx: Path) -> str:
    return _digest((str(f.relative_to(ctx)), f) for f in ctx.rglob("*"))


def inputs_hash(flavor: str = "cpu") -> str:
    """What an image of `flavor` is built from, without assembling its context (no wheels needed): the Dockerfile,
    the image's lock, impl/ and the suite's files. A run made in a container is keyed by it, so that a run from
    another commit's image is never reused under this one."""
    files = [("Dockerfile", DOCKER_DIR / f"Dockerfile.{flavor}"),
             ("requirements.txt", DOCKER_DIR / f"requirements-{flavor}.txt")]
    for top in ["impl", *SUITE_FILES]:
        root = ROOT / top
        found = [root] if root.is_file() else [f for f in root.rglob("*") if "__pycache__" not in f.parts]
        files += [(str(f.relative_to(ROOT)), f) for f in found]
    return _digest(files)


def _digest(files) -> str:
    h = hashlib.sha256()
    for name, f in sorted((n, f) for n, f in files if f.is_file()):
        h.update(name.encode())
        if f.suffix == ".whl":  # a wheel is named by its version; hashing 190 MB each build is not needed
            h.update(str(f.stat().st_size).encode())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


def docker_build(d: Docker, ctx: Path, tag: str, build_args: dict | None = None, timeout: float = 900) -> dict:
    """`docker build` (legacy builder); a failing step raises BuildError naming the step with its log's tail."""
    args = ["build", "--rm", "--force-rm", "-t", tag]
    for k, v in (build_args or {}).items():
        args += ["--build-arg", f"{k}={v}"]
    t0 = time.monotonic()
    p = d.cmd(*args, str(ctx), timeout=timeout, check=False)
    log = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    # the intermediate images this build made (the build stage's chain is untagged once the tag goes): removed
    # with the tag unless kept. A FROM step's id is the base image's, and a step printed after "Using cache" is an
    # image an earlier build made (perhaps the chain of a kept image): neither is this build's to remove
    layers, skip = [], False
    for line in log.splitlines():
        if _STEP.match(line):
            skip = " : FROM " in line
        elif line.strip() == "---> Using cache":
            skip = True
        elif line.startswith(" ---> ") and not skip and re.fullmatch(r"[0-9a-f]{12}", line[6:].strip()):
            layers.append(line[6:].strip())
    d.made["layers"] += layers
    if p.returncode != 0:
        steps = [m for m in (_STEP.match(l) for l in log.splitlines()) if m]
        where = f"step {steps[-1][1]}/{steps[-1][2]} ({steps[-1][3][:120]})" if steps else "before its first step"
        raise BuildError(f"docker build of {tag} failed at {where}; the log's last lines:\n{tail(log, 20)}")
    if tag not in d.made["images"]:
        d.made["images"].append(tag)
    steps = sum(1 for l in log.splitlines() if _STEP.match(l))
    cached = log.count("---> Using cache")
    return {"image": tag, "build_s": round(time.monotonic() - t0, 1), "build_steps": steps, "steps_cached": cached}


def build_image(spec=None, d: Docker | None = None, *, flavor: str | None = None, base_image: str | None = None,
                keep: bool = True, timeout: float = 1200) -> dict:
    """Build deploy/docker/Dockerfile.<flavor> into llm-milestones:<flavor>-<context hash>.

    base_image None: the debootstrap base (made once, kept); any other value is passed as BASE_IMAGE.
    keep: leave the tag (the CLI); False: a tag unique to this session (llm-milestones:<flavor>-<hash>-tmp-<owner>),
    removed with the rest of the session's objects (the tests); an image that also carries another tag stays.
    `spec`: a W21Spec (its `container` section) or a ContainerSpec gives flavor and base_image unless passed."""
    if spec is not None and getattr(spec, "container", spec) is not None:
        from impl.w21_infra.container import container_spec

        c = container_spec(spec)
        flavor = flavor or c.flavor
        base_image = base_image if base_image is not None else c.base_image
    flavor = flavor or "cpu"
    own = d is None
    d = d or connect()
    try:
        info = {}
        if base_image is None:
            info.update(ensure_base(d))
            base_image = BASE_TAG
        dockerfile = DOCKER_DIR / f"Dockerfile.{flavor}"
        lock = DOCKER_DIR / f"requirements-{flavor}.txt"
        if not dockerfile.exists() or not lock.exists():
            raise DockerError(f"no {dockerfile} / {lock}: flavors are cpu and cuda")
        with tempfile.TemporaryDirectory(prefix="llmm-ctx-") as tmp:
            t0 = time.monotonic()
            ctx = build_context(dockerfile, lock, Path(tmp) / "ctx", host_wheels=flavor == "cpu")
            info["context_s"] = round(time.monotonic() - t0, 1)
            # keep=False: a tag of this session's own, never the one `deploy build` keeps for the same content
            # (removing a shared tag would take a user's image away)
            tag = f"{IMAGE_REPO}:{flavor}-{context_hash(ctx)}" + ("" if keep else f"-tmp-{d.owner}")
            info.update(docker_build(d, ctx, tag, {"BASE_IMAGE": base_image}, timeout=timeout))
        if keep:
            d.made["images"].remove(tag)
            d.made["layers"] = []  # the build cache stays with the kept image
            # and under the name the rendered manifests use (cluster.image: llm-milestones:cpu)
            d.cmd("tag", tag, f"{IMAGE_REPO}:{flavor}")
            info["also_tagged"] = f"{IMAGE_REPO}:{flavor}"
        info["image_size_mb"] = round(d.image_size_mb(tag), 1)
        info["base_image"] = base_image
        version = d.cmd("version", "--format", "{{.Server.Version}}", check=False).stdout.decode().strip()
        who = "the suite's own dockerd" if d.started_by_suite else d.host
        info["daemon"] = f"{who} (Docker {version or '?'}, legacy builder)"
        return info
    finally:
        if own:
            release(d)

