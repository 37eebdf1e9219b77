"""DDP parity: N processes with the same global batch must train the same model as one process.

Both runs use the profile's model, data and optimizer with dropout off (dropout masks differ per rank) for
`ddp_parity.steps` steps: once in this process, once under torchrun with `ddp_parity.nproc` ranks (gloo on CPU,
NCCL on GPU). DDP averages the ranks' gradients, so the two runs differ only by floating-point summation order.
The throughput of both runs gives the scaling efficiency tokens/s(N) / (N x tokens/s(1)).
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from impl.core.artifacts import Runs
from impl.w01_gpt import train
from impl.w01_gpt.spec import W01Spec


def parity_spec(spec: W01Spec, nproc: int) -> W01Spec:
    p = spec.ddp_parity
    d = spec.model_dump()
    d["model"]["dropout"] = 0.0
    d["train"].update(steps=p.steps, nproc=nproc, log_every=1, checkpoint_every=p.steps + 1,
                      warmup_steps=min(d["train"]["warmup_steps"], p.steps))
    return W01Spec.model_validate(d)


def run(spec: W01Spec, runs: Runs, skip_allreduce: bool = False) -> dict:
    """Train both ways; return the largest parameter and loss differences and the scaling efficiency."""
    single, multi = parity_spec(spec, 1), parity_spec(spec, spec.ddp_parity.nproc)
    dirs = {}
    for name, s in (("single", single), ("ddp", multi)):
        config = {**s.model_dump(exclude={"targets"}), "skip_allreduce": skip_allreduce and name == "ddp"}
        dirs[name] = runs.dir_for(config, name=f"ddp_parity/{name}")
        train.run(s, dirs[name], do_eval=False, skip_allreduce=config["skip_allreduce"], timeout_s=1800)
    a, b = (load_file(str(dirs[n] / "model.safetensors")) for n in ("single", "ddp"))
    param_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    logs = {n: [json.loads(l) for l in (dirs[n] / "train_log.jsonl").read_text().splitlines()] for n in dirs}
    loss_diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(logs["single"], logs["ddp"], strict=True))
    m = {n: json.loads((dirs[n] / "metrics.json").read_text()) for n in dirs}
    nproc = spec.ddp_parity.nproc
    return {
        "ddp_max_param_diff": param_diff,
        "max_loss_diff": loss_diff,
        "steps": spec.ddp_parity.steps,
        "nproc": nproc,
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
        "tokens_per_s_single": m["single"]["train_tokens_per_s"],
        "tokens_per_s_ddp": m["ddp"]["train_tokens_per_s"],
        "scaling_efficiency": m["ddp"]["train_tokens_per_s"] / (nproc * m["single"]["train_tokens_per_s"]),
        "curve_single": [(x["step"], x["loss"]) for x in logs["single"]],
        "curve_ddp": [(x["step"], x["loss"]) for x in logs["ddp"]],
    }
