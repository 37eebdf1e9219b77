#!/usr/bin/env bash
# Everything from a fresh machine with Python 3.11: a virtual environment, the suite and its dependencies,
# the fixture data, then the cpu acceptance suite, which ends with the scorecard in reports/.
#
#   bash bootstrap.sh           # set up and run the cpu acceptance checks
#   bash bootstrap.sh --setup   # set up only (.ci/run uses this, then runs the whole test suite)
#
# A fixture that cannot be fetched stops only the checks that need it: they become ERROR rows naming it, every
# other check still runs, and the script exits non-zero with what is missing in its last lines.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1

phases=()
phase() { phases+=("$(printf '%-36s %5d s' "$1" "$SECONDS")"); SECONDS=0; }  # the time of each step, printed last
SECONDS=0
python=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$python" -m venv .venv

# DeepSpeed compiles against the torch already installed, so it comes second, without build isolation; on CPU
# its shared-memory collective is compiled here (~150 s once) instead of at the first run of every machine.
DEEPSPEED=deepspeed==0.19.8
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/pip install -q -e .                          # keeps or takes a CUDA build of torch
    .venv/bin/python -c "import deepspeed" 2>/dev/null || .venv/bin/pip install -q --no-build-isolation "$DEEPSPEED"
else
    # exactly the locked environment CI tested (every package pinned with its sha256), DeepSpeed last: it builds
    # against the torch installed by the first step. pip installs the locked uv, uv the rest: from its cache that
    # takes ~40 s where pip took ~150 s of every CI run. uv does not read pip's settings, so pip's find-links (a
    # directory of wheels, such as torch's CPU build on this machine's disk) is passed on, and it compiles the
    # bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, nothing caches it later, and every process the
    # suite starts would compile torch and transformers again (twice the import time; locust's timers fired early).
    locked=$(mktemp -d)
    grep '^uv==' requirements-cpu.lock > "$locked/uv.txt"
    grep -v '^deepspeed==' requirements-cpu.lock > "$locked/main.txt"
    grep '^deepspeed==' requirements-cpu.lock > "$locked/deepspeed.txt"
    .venv/bin/pip install -q --require-hashes --no-deps -r "$locked/uv.txt"
    uv=(.venv/bin/uv pip install -q --python .venv/bin/python --no-deps --compile-bytecode
        ${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"})
    "${uv[@]}" --require-hashes -r "$locked/main.txt"
    .venv/bin/python -c "import deepspeed" 2>/dev/null || DS_BUILD_SHM_COMM=1 DS_ACCELERATOR=cpu \
        "${uv[@]}" --require-hashes --no-build-isolation -r "$locked/deepspeed.txt"
    "${uv[@]}" -e .
    rm -r "$locked"
    .venv/bin/python -m impl lock --check  # a venv left from before that drifted says so here
fi
phase "venv and the locked install"

# The fixtures come through apt-get download and npm pack; the scorecard's page is checked in headless Chromium,
# and w23's portfolio site through selenium, which drives it with Debian's chromedriver (chromium-driver).
# A bare Debian image may lack them.
need=()
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# w21: the container checks start Debian's dockerd (docker.io, legacy builder) and make their base image with
# debootstrap (no image registry is needed)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
phase "Debian packages"
fetch_log=$(mktemp)
fetch_rc=0
.venv/bin/python -m impl fetch 2> >(tee "$fetch_log" >&2) || fetch_rc=$?

phase "fixtures (fetch, verify, convert)"
test_rc=0
if [ "${1:-}" != "--setup" ]; then
    .venv/bin/python -m pytest acceptance -m cpu --durations=15 || test_rc=$?  # the slowest checks, last
    phase "cpu acceptance suite"
fi
echo "== bootstrap.sh: time by step"
printf '%s\n' "${phases[@]}"
if [ "$fetch_rc" != 0 ]; then
    echo "bootstrap: some fixtures could not be fetched; the checks that need them are ERROR rows:" >&2
    grep '^MISSING' "$fetch_log" >&2 || true
fi
rm -f "$fetch_log"
[ "$fetch_rc" = 0 ] && [ "$test_rc" = 0 ]
