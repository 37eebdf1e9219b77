"""No kernel comes from a model hub at run time.

bitsandbytes (0.50), when it is imported on a CPU with AVX512-BF16, asks the `kernels` package for a fused 4-bit
kernel from the Hugging Face hub (`kernels-community/quantization-bitsandbytes`): a network request on every
process that imports it, and two warnings when it fails. The suite never uses that kernel (4-bit layers stay on
bitsandbytes' plain kernel: impl/core/hf.py, keep_4bit_weights_in_their_training_layout), and nothing may reach
a hub at run time, so the first import of bitsandbytes in a process finds `kernels.get_kernel` refusing hub
repositories, and bitsandbytes' warning about that refusal is dropped. `import impl` installs this.
"""
from __future__ import annotations

import importlib.abc
import logging
import sys

BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"


class HubKernelsOff(RuntimeError):
    pass


def refuse_hub_kernel(repo_id: str, *args, **kwargs):
    raise HubKernelsOff(f"{repo_id}: llm-milestones loads no kernel from a model hub at run time")


def _drop_refusal_warning(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


class _TurnHubKernelsOffBeforeBitsandbytes(importlib.abc.MetaPathFinder):
    """Acts once, when something first imports bitsandbytes, then leaves the import to the usual finders."""

    def find_spec(self, name, path=None, target=None):
        if name == "bitsandbytes":
            sys.meta_path.remove(self)
            turn_off()
        return None


def turn_off() -> None:
    try:
        import kernels
    except ImportError:  # bitsandbytes then fails its own import of it and warns: the filter below drops that
        pass
    else:
        kernels.get_kernel = refuse_hub_kernel
    logging.getLogger(BNB_CPU_OPS_LOGGER).addFilter(_drop_refusal_warning)


def install() -> None:
    if "bitsandbytes" in sys.modules:
        turn_off()  # imported before impl: bitsandbytes' lookup has run; later kernel lookups are still refused
    elif not any(isinstance(f, _TurnHubKernelsOffBeforeBitsandbytes) for f in sys.meta_path):
        sys.meta_path.insert(0, _TurnHubKernelsOffBeforeBitsandbytes())
