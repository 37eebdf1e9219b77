"""w01's cases: the GPT's pieces, its loss, optimizer step, schedule and clipping."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.units.cases import case, gen as _gen, randn as _randn


@case("w01.softmax")
def _softmax(fn):
    x = _randn(3, 4, 6, scale=3.0)
    x[0, 0, 0] = 1000.0  # exp(1000) overflows: only a stable softmax survives it
    return {"last": fn(x, dim=-1), "middle": fn(x, dim=1)}


@case("w01.causal_attention")
def _causal_attention(fn):
    q, k, v = (_randn(2, 3, 5, 8, seed=s) for s in (1, 2, 3))
    return {"out": fn(q, k, v)}


def _mha_weights(C: int = 16):
    return (_randn(3 * C, C, seed=4, scale=C ** -0.5), _randn(3 * C, seed=5, scale=0.1),
            _randn(C, C, seed=6, scale=C ** -0.5), _randn(C, seed=7, scale=0.1))


@case("w01.multi_head_self_attention")
def _mha(fn):
    x = _randn(2, 5, 16, seed=8)
    return {"out": fn(x, *_mha_weights(16), n_head=4)}


def _sublayers(C: int = 8):
    """Four fixed, different functions (B, T, C) -> (B, T, C) standing in for a block's sublayers."""
    w = [_randn(C, C, seed=10 + i, scale=C ** -0.5) for i in range(4)]
    return (lambda h: torch.tanh(h @ w[0]), lambda h: h @ w[1], lambda h: torch.sin(h @ w[2]), lambda h: h @ w[3])


@case("w01.transformer_block")
def _block(fn):
    x = _randn(2, 4, 8, seed=9)
    return {"out": fn(x, *_sublayers(8))}


def _gpt_inputs(ln_scale: float = 1.0, ln_shift: float = 0.0):
    """Token ids, embeddings, two blocks (order matters: a then b) and a final norm for the GPT's cases."""
    V, C, T_max = 11, 8, 6
    idx = torch.randint(0, V, (2, 5), generator=_gen(14))
    wte, wpe = _randn(V, C, seed=15), _randn(T_max, C, seed=16)
    a, b, c, d = _sublayers(C)
    blocks = [lambda h: h + a(h), lambda h: h + b(h) * 0.5]
    return idx, wte, wpe, blocks, lambda h: F.layer_norm(h, (C,)) * ln_scale + ln_shift


@case("w01.gpt_hidden")
def _gpt_hidden(fn):
    return {"out": fn(*_gpt_inputs(ln_scale=1.5, ln_shift=0.25))}  # a norm that is not the identity on its output


@case("w01.gpt_logits")
def _gpt(fn):
    return {"out": fn(*_gpt_inputs())}


@case("w01.cross_entropy")
def _cross_entropy(fn):
    logits = _randn(10, 7, seed=17, scale=3.0)
    targets = torch.randint(0, 7, (10,), generator=_gen(18))
    targets[[2, 5]] = -1  # ignored positions
    return {"out": fn(logits, targets, ignore_index=-1)}


@case("w01.lm_head_cross_entropy")
def _lm_head_cross_entropy(fn):
    # 150 rows, ignored positions spread unevenly over them (blocks that split them: tests/test_w01_model.py)
    hidden, weight = _randn(150, 8, seed=40).requires_grad_(), _randn(37, 8, seed=41, scale=1.5).requires_grad_()
    targets = torch.randint(0, 37, (150,), generator=_gen(42))
    targets[:40] = -1
    targets[[70, 99, 140]] = -1
    loss = fn(hidden, weight, targets, ignore_index=-1)
    loss.backward()
    return {"out": loss.detach(), "grad_hidden": hidden.grad, "grad_weight": weight.grad}


@case("w01.adamw_step")
def _adamw(fn):
    params = [_randn(4, 3, seed=19), _randn(5, seed=20)]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    for step in (1, 2, 3):  # three updates: the bias corrections differ at each
        grads = [_randn(*p.shape, seed=30 + step + i) for i, p in enumerate(params)]
        fn(params, grads, state[0], state[1], step, lr=0.1, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    return {"params.0": params[0], "params.1": params[1], "exp_avg.0": state[0][0], "exp_avg_sq.1": state[1][1]}


@case("w01.cosine_lr")
def _cosine(fn):
    steps = [0, 1, 4, 5, 6, 30, 54, 55, 80]
    return {"lr": torch.tensor([fn(s, max_lr=6e-4, min_lr=6e-5, warmup_steps=5, total_steps=55) for s in steps],
                               dtype=torch.float64)}


@case("w01.clip_grad_norm")
def _clip(fn):
    big = [_randn(3, 4, seed=40, scale=2.0), _randn(6, seed=41, scale=0.5)]  # global norm ~7: clipped to 1
    small = [_randn(3, seed=42, scale=0.01)]  # below the limit: unchanged
    return {"total_big": fn(big, max_norm=1.0), "big.0": big[0], "big.1": big[1],
            "total_small": fn(small, max_norm=1.0), "small.0": small[0]}
