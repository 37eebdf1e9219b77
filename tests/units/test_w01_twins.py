"""The unit tests are sharp: for each unit a plausible wrong implementation fails its snapshot (the twins)."""
import math

import pytest
import torch
import torch.nn.functional as F

from impl import units
from impl.units import check


def softmax_without_the_max(x, dim=-1):
    e = x.exp()
    return e / e.sum(dim=dim, keepdim=True)


def attention_without_the_causal_mask(q, k, v, dropout_p=0.0):
    return F.scaled_dot_product_attention(q, k, v, is_causal=False)


def attention_without_the_scale(q, k, v, dropout_p=0.0):
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def attention_from_matmuls(q, k, v, dropout_p=0.0):  # right, written by hand: passes (the tolerance allows it)
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return units.w01.softmax(scores, -1) @ v


def mha_as_one_head(x, qkv_weight, qkv_bias, proj_weight, proj_bias, n_head, dropout_p=0.0):
    return units.catalogue("w01")["multi_head_self_attention"](x, qkv_weight, qkv_bias, proj_weight, proj_bias, 1)


def block_post_norm(x, ln_1, attn, ln_2, mlp):
    x = ln_1(x + attn(x))
    return ln_2(x + mlp(x))


def gpt_without_positions(idx, wte, wpe, blocks, ln_f, dropout_p=0.0, training=False):
    return units.catalogue("w01")["gpt_logits"](idx, wte, torch.zeros_like(wpe), blocks, ln_f)


def hidden_without_the_final_norm(idx, wte, wpe, blocks, ln_f, dropout_p=0.0, training=False):
    return units.catalogue("w01")["gpt_hidden"](idx, wte, wpe, blocks, lambda h: h)


def lm_head_cross_entropy_as_a_mean_of_block_means(hidden, weight, targets, ignore_index=-1):
    losses = [F.cross_entropy(F.linear(hidden[s:s + 64], weight), targets[s:s + 64], ignore_index=ignore_index)
              for s in range(0, len(targets), 64)]
    return torch.stack(losses).mean()


def lm_head_cross_entropy_with_the_head_detached(hidden, weight, targets, ignore_index=-1):
    return F.cross_entropy(F.linear(hidden, weight.detach()), targets, ignore_index=ignore_index)


def lm_head_cross_entropy_in_two_steps(hidden, weight, targets, ignore_index=-1):  # right: passes
    return units.w01.cross_entropy(F.linear(hidden, weight), targets, ignore_index)


def cross_entropy_summed(logits, targets, ignore_index=-1):
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")


def cross_entropy_counting_ignored_positions(logits, targets, ignore_index=-1):
    keep = targets != ignore_index
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum") / len(targets) + 0 * keep.sum()


@torch.no_grad()
def adamw_without_bias_correction(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay):
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-lr)


@torch.no_grad()
def adam_with_l2_in_the_gradient(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay):
    grads = [g + weight_decay * p for g, p in zip(grads, params)]  # Adam + L2, not AdamW's decoupled decay
    units.catalogue("w01")["adamw_step"](params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, 0.0)


def cosine_without_warmup(step, max_lr, min_lr, warmup_steps, total_steps):
    return units.catalogue("w01")["cosine_lr"](step + warmup_steps, max_lr, min_lr, 0, total_steps)


def cosine_down_to_zero(step, max_lr, min_lr, warmup_steps, total_steps):
    return units.catalogue("w01")["cosine_lr"](step, max_lr, 0.0, warmup_steps, total_steps)


@torch.no_grad()
def clip_each_tensor_alone(grads, max_norm):
    norms = [torch.linalg.vector_norm(g) for g in grads]
    for g, n in zip(grads, norms):
        g.mul_(torch.clamp(max_norm / (n + 1e-6), max=1.0))
    return torch.linalg.vector_norm(torch.stack(norms))


TWINS = [
    ("softmax", softmax_without_the_max),
    ("causal_attention", attention_without_the_causal_mask),
    ("causal_attention", attention_without_the_scale),
    ("multi_head_self_attention", mha_as_one_head),
    ("transformer_block", block_post_norm),
    ("gpt_hidden", hidden_without_the_final_norm),
    ("gpt_logits", gpt_without_positions),
    ("lm_head_cross_entropy", lm_head_cross_entropy_as_a_mean_of_block_means),
    ("lm_head_cross_entropy", lm_head_cross_entropy_with_the_head_detached),
    ("cross_entropy", cross_entropy_summed),
    ("cross_entropy", cross_entropy_counting_ignored_positions),
    ("adamw_step", adamw_without_bias_correction),
    ("adamw_step", adam_with_l2_in_the_gradient),
    ("cosine_lr", cosine_without_warmup),
    ("cosine_lr", cosine_down_to_zero),
    ("clip_grad_norm", clip_each_tensor_alone),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w01"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w01", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


def test_the_loss_written_in_two_steps_passes_the_blocked_references_snapshot():
    assert check.check("w01", "lm_head_cross_entropy", lm_head_cross_entropy_in_two_steps) == ("pass", "")


def test_the_blocked_loss_under_bfloat16_autocast_matches_the_two_steps_under_it():
    """The GPU profiles train under bf16 autocast: the blocks' matmuls run in bf16, their softmax in fp32, as
    autocast does for linear + cross-entropy."""
    hidden, weight = torch.randn(300, 32, requires_grad=True), (torch.randn(500, 32) * 0.2).requires_grad_()
    targets = torch.randint(0, 500, (300,))
    targets[::7] = -1
    results = []
    for fn in (units.catalogue("w01")["lm_head_cross_entropy"], lm_head_cross_entropy_in_two_steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(hidden, weight, targets, ignore_index=-1)
        loss.backward()
        results.append((loss.detach().float(), hidden.grad, weight.grad))
        hidden.grad = weight.grad = None
    (loss_a, gh_a, gw_a), (loss_b, gh_b, gw_b) = results
    assert gh_a.dtype == hidden.dtype and gw_a.dtype == weight.dtype
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gh_a, gh_b, rtol=5e-2, atol=2e-4)
    torch.testing.assert_close(gw_a, gw_b, rtol=5e-2, atol=2e-4)


def test_the_blocked_loss_without_autograd_is_the_same_number_and_keeps_no_gradient():
    hidden, weight = torch.randn(130, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (130,))
    fn = units.catalogue("w01")["lm_head_cross_entropy"]
    with torch.no_grad():  # an evaluation: no gradient blocks computed, none kept
        quiet = fn(hidden, weight, targets)
    assert not quiet.requires_grad and quiet.grad_fn is None
    assert torch.equal(quiet, fn(hidden, weight, targets).detach())


def test_attention_written_from_matmuls_passes_within_the_stated_tolerance():
    assert check.check("w01", "causal_attention", attention_from_matmuls) == ("pass", "")
