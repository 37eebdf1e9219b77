"""w01's units, the reference implementations: what the GPT (model.py) and its training (train.py, optim.py) are
made of, each a function of tensors a learner can write and test alone (tests/units/, `python -m impl units`).
The milestone's code calls them through `impl.units.w01`, so a learner's version replaces these everywhere.

Shapes: B batch, T positions, C = n_embd channels, H heads, D = C / H per head, V vocabulary.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from impl.units import unit, w01

Layer = Callable[[torch.Tensor], torch.Tensor]


@unit(rtol=1e-5, atol=1e-6)
def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, stable for large inputs (the maximum is subtracted first). Any shape."""
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


@unit(rtol=1e-4, atol=1e-5)
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(D), positions after the query masked out) v. q, k, v: (B, H, T, D) -> (B, H, T, D).
    (The reference calls torch's fused kernel; a learner writes it from matmuls, a mask and `softmax`.)"""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


@unit(rtol=1e-4, atol=1e-5)
def multi_head_self_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                              proj_weight: torch.Tensor, proj_bias: torch.Tensor | None, n_head: int,
                              dropout_p: float = 0.0) -> torch.Tensor:
    """x: (B, T, C); qkv_weight (3C, C) projects to q, k, v (in that order along the output); split into n_head
    heads of D; causal attention per head; heads concatenated and projected by proj_weight (C, C). -> (B, T, C)"""
    B, T, C = x.shape
    q, k, v = F.linear(x, qkv_weight, qkv_bias).split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    y = w01.causal_attention(q, k, v, dropout_p)
    return F.linear(y.transpose(1, 2).contiguous().view(B, T, C), proj_weight, proj_bias)


@unit(rtol=1e-5, atol=1e-6)
def transformer_block(x: torch.Tensor, ln_1: Layer, attn: Layer, ln_2: Layer, mlp: Layer) -> torch.Tensor:
    """The pre-LayerNorm residual block: x + attn(ln_1(x)), then that + mlp(ln_2(that)). The four sublayers are
    functions (B, T, C) -> (B, T, C): the model passes its modules (under tensor parallelism, their sharded
    versions). (B, T, C) -> (B, T, C)."""
    x = x + attn(ln_1(x))
    return x + mlp(ln_2(x))


@unit(rtol=1e-5, atol=1e-6)
def gpt_hidden(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, blocks: list[Layer], ln_f: Layer,
               dropout_p: float = 0.0, training: bool = False) -> torch.Tensor:
    """idx: (B, T) token ids -> the last hidden states (B, T, C): token embedding wte (V, C) plus the position
    embedding wpe (T_max, C) of positions 0..T-1 (dropout on their sum while training), the blocks in order, then
    the final LayerNorm ln_f."""
    x = F.dropout(F.embedding(idx, wte) + wpe[:idx.shape[1]], dropout_p, training)
    for block in blocks:
        x = block(x)
    return ln_f(x)


@unit(rtol=1e-5, atol=1e-6)
def gpt_logits(idx: torch.Tensor, wte: torch.Tensor, wpe: torch.Tensor, blocks: list[Layer], ln_f: Layer,
               dropout_p: float = 0.0, training: bool = False) -> torch.Tensor:
    """idx: (B, T) token ids -> logits (B, T, V): `gpt_hidden`, then the output projection tied to the token
    embedding (logits = hidden wteᵀ)."""
    return F.linear(w01.gpt_hidden(idx, wte, wpe, blocks, ln_f, dropout_p, training), wte)


@unit(rtol=1e-5, atol=1e-6)
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """The mean over positions whose target is not `ignore_index` of -log softmax(logits)[target].
    logits (N, V), targets (N,) -> a scalar. (The reference calls torch's fused kernel: over GPT-2's 50,257-word
    vocabulary, logsumexp minus the gathered logit made w19's training steps ~1.8x slower; a learner writes it
    from `logsumexp` and a gather.)"""
    return F.cross_entropy(logits, targets, ignore_index=ignore_index)


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
    """out = a @ b (out += a @ b with `accumulate`) without a fresh result tensor where the dtypes allow: on CPU a new
    block every time is fresh memory to fault in (a 64 x 4,096 one: its matmul ran ~1.7x slower)."""
    if a.dtype == b.dtype == out.dtype and not torch.is_autocast_enabled(out.device.type):
        return out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    product = a @ b  # under autocast the matmul runs in its dtype; out keeps its own
    return out.add_(product) if accumulate else out.copy_(product)


class _LinearCrossEntropy(torch.autograd.Function):
    """The loss of `lm_head_cross_entropy`, with its gradient computed block by block in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, rows, need_grad):
        keep = targets != ignore_index
        count = keep.sum().clamp(min=1)
        safe = torch.where(keep, targets, 0)
        row_scale = (keep / count)[:, None]  # d loss / d logits = (softmax - one hot) / count, for the kept rows
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        # one block of logits, reused (the softmax in fp32)
        block = hidden.new_empty((min(rows, hidden.shape[0]), weight.shape[0]), dtype=torch.float32)
        arange = torch.arange(block.shape[0], device=hidden.device)
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[0], rows):
            h, t, k = hidden[s:s + rows], safe[s:s + rows], keep[s:s + rows]
            z = _matmul_into(block[:len(t)], h, weight.t())
            peak = z.amax(dim=-1, keepdim=True)
            picked = z.gather(1, t[:, None]).squeeze(1)
            z.sub_(peak).exp_()
            norm = z.sum(dim=-1, keepdim=True)
            total += ((peak.squeeze(1) + norm.squeeze(1).log() - picked) * k).sum()
            if need_grad:  # (softmax - one hot) x scale in one pass over the block: z x (scale / norm), then targets
                scale = row_scale[s:s + rows]
                z.mul_(scale / norm)
                z[arange[:len(t)], t] -= scale.squeeze(1)
                _matmul_into(grad_hidden[s:s + rows], z.to(h.dtype), weight.to(h.dtype))
                _matmul_into(grad_weight, z.t().to(h.dtype), h, accumulate=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, (grad_weight * grad_loss).to(ctx.weight_dtype), None, None, None, None


@unit(rtol=1e-5, atol=1e-6)
def lm_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          ignore_index: int = -1) -> torch.Tensor:
    """`cross_entropy(hidden weightᵀ, targets)` and its gradient: hidden (N, C), weight (V, C), targets (N,) -> a
    scalar. The same number as the two steps, without ever holding the N x V logits: they are formed a block of rows
    at a time (`_block_rows`), and each block's gradient is taken while it is there. (Over GPT-2's 50,257 words the
    logits of 1,024 positions are 206 MB, written and read back several times by linear + cross-entropy; block by
    block a training step of w19's GPT-2 model is ~1.5x faster on one thread. A learner may write the two steps:
    `w01.cross_entropy(F.linear(hidden, weight), targets, ignore_index)`.)"""
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)  # evaluation: the loss only
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, _block_rows(weight.shape[0]), need_grad)


def _block_rows(vocab: int, block_bytes: int = 16 << 20) -> int:
    """Rows of logits a block of `lm_head_cross_entropy` holds: as many as fit in ~16 MB of fp32, 64 to 1,024 (1,024
    of w01's 4,096 words, 83 of GPT-2's 50,257). Over 4,096 words 1,024-row blocks made w01's training step 4-10%
    faster than 64-row ones, 6% at one thread (the weight's gradient accumulated 16 times a step instead of 64, each
    matmul less thin); 2,048 and the whole 4,096 were slower again (more fresh memory, out of cache)."""
    return max(64, min(1024, block_bytes // (4 * vocab)))


@unit(rtol=1e-6, atol=1e-7)
@torch.no_grad()
def adamw_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
               exp_avg_sqs: list[torch.Tensor], step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float) -> None:
    """One AdamW update, in place, of each parameter and its two moment estimates; `step` counts updates from 1.
    Decoupled weight decay (the parameter shrinks by lr x weight_decay, the gradient is untouched), moments
    corrected for their zero start by 1 - beta^step. (The order of operations is torch's, so that runs trained
    with torch.optim.AdamW before are reproduced bit for bit.)"""
    bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bias_correction1)


@unit(rtol=1e-6, atol=1e-9)
def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to max_lr over warmup_steps (step 0 gets max_lr / warmup_steps), then half a cosine from
    max_lr down to min_lr at total_steps, min_lr after."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


@unit(rtol=1e-5, atol=1e-7)
@torch.no_grad()
def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scales every gradient in place by min(1, max_norm / (total + 1e-6)), total being the L2 norm of all of
    them together (one global norm, not one per tensor). Returns the total norm before clipping."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale)
    return total
