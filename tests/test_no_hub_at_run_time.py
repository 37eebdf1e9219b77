"""Nothing reaches for a model hub at run time: bitsandbytes' import-time lookup of a hub kernel (on CPUs with
AVX512-BF16) is turned off by `import impl`. This machine lacks AVX512-BF16, so the child process reports it."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import importlib.abc, importlib.machinery, json, socket, sys

network = []
real_connect = socket.socket.connect


def connect_only_to_loopback(self, address):
    if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        network.append(str(address))
        raise OSError("this test allows loopback only")
    return real_connect(self, address)


socket.socket.connect = connect_only_to_loopback


class ReportAvx512Bf16(importlib.abc.MetaPathFinder):  # the CPU feature that makes bitsandbytes look
    def find_spec(self, name, path=None, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, ReportAvx512Bf16())
lookups = []
if sys.argv[1] == "through-impl":
    import impl
else:  # the twin: bitsandbytes on its own; record its lookup instead of letting it reach for the hub
    import kernels

    def record(repo_id, *a, **k):
        lookups.append(repo_id)
        raise RuntimeError("recorded")

    kernels.get_kernel = record
import bitsandbytes
import kernels
print(json.dumps({"network": network, "lookups": lookups, "refuses": kernels.get_kernel.__name__}))
'''


def _import_bitsandbytes(mode: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_importing_bitsandbytes_after_impl_reaches_for_no_hub_and_prints_nothing_about_it():
    seen, stderr = _import_bitsandbytes("through-impl")
    assert seen["network"] == [] and seen["refuses"] == "refuse_hub_kernel", seen
    assert "kernels-community" not in stderr, stderr


def test_the_twin_bitsandbytes_alone_looks_up_the_hub_kernel_and_warns():
    seen, stderr = _import_bitsandbytes("alone")
    assert seen["lookups"] == ["kernels-community/quantization-bitsandbytes"], seen
    assert "kernels-community" in stderr
