from impl.core import hub_kernels

hub_kernels.install()  # before anything imports bitsandbytes: see impl/core/hub_kernels.py
