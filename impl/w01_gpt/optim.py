"""AdamW as a torch optimizer whose update is w01's `adamw_step` unit (impl/w01_gpt/units.py, or a learner's).

Its state (`step`, `exp_avg`, `exp_avg_sq` per parameter) has torch.optim.AdamW's names and types, so checkpoints
move between the two. DeepSpeed's ZeRO accepts only its tested optimizer types, so the ZeRO runs (w05, w21) use
torch.optim.AdamW itself.
"""
from __future__ import annotations

import torch

from impl.units import w01


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            w01.adamw_step(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                           [s["exp_avg_sq"] for s in states], int(states[0]["step"].item()), group["lr"], beta1,
                           beta2, group["eps"], group["weight_decay"])
        return loss
