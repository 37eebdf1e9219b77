"""The w01 GPT itself: causality, tying, initialisation, sampling and the evaluation protocol."""
import math

import numpy as np
import pytest
import torch

from impl import adapters
from impl.w01_gpt.train import evaluate


def small_gpt(**kw):
    torch.manual_seed(0)
    return adapters.w01_model(**{"vocab_size": 97, "context": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw}).eval()


def test_changing_a_future_token_never_changes_earlier_logits():
    model = small_gpt()
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    for t in (3, 9, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 97
        a, _ = model(idx)
        b, _ = model(changed)
        assert torch.equal(a[:, :t], b[:, :t]), f"logits before position {t} changed"
        assert not torch.allclose(a[:, t], b[:, t]), "the changed position itself must see its own token"


def test_attention_without_the_causal_mask_is_caught_by_the_causality_check(monkeypatch):
    # the sabotage twin of the check above: a model that peeks ahead fails it
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, is_causal, **kw: real(q, k, v, is_causal=False, **kw))
    model = small_gpt()
    idx = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[0, 9] = (changed[0, 9] + 1) % 97
    assert not torch.equal(model(idx)[0][:, :9], model(changed)[0][:, :9])


@pytest.mark.parametrize("rows", [7, 64, 1024])
def test_the_blocked_lm_head_loss_is_the_loss_of_the_whole_logits_whatever_the_block(rows):
    # the unit picks its block from the vocabulary (1,024 rows of 4,096 words); blocks that split the rows unevenly,
    # with ignored positions among them, must give the loss and gradients of the logits formed whole
    from impl.w01_gpt.units import _LinearCrossEntropy

    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(150, 8, generator=g), torch.randn(37, 8, generator=g)
    targets = torch.randint(0, 37, (150,), generator=g)
    targets[[0, 6, 7, 70, 149]] = -1
    whole = [t.clone().requires_grad_() for t in (hidden, weight)]
    expected = torch.nn.functional.cross_entropy(whole[0] @ whole[1].t(), targets, ignore_index=-1)
    expected.backward()
    blocked = [t.clone().requires_grad_() for t in (hidden, weight)]
    loss = _LinearCrossEntropy.apply(*blocked, targets, -1, rows, True)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    for mine, reference in zip(blocked, whole):
        torch.testing.assert_close(mine.grad, reference.grad)


def test_weights_are_tied_and_initialised_like_gpt2():
    model = small_gpt(n_layer=4)
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.001
    assert model.flops_per_token() > 6 * model.num_params()


def test_loss_at_initialisation_is_close_to_uniform():
    model = small_gpt()
    g = torch.Generator().manual_seed(2)
    idx, targets = torch.randint(0, 97, (2, 8, 16), generator=g)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(97)) < 0.2


def test_sampling_is_reproducible_and_greedy_is_deterministic():
    model = small_gpt()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 11) and torch.equal(a, b)
    assert torch.equal(model.generate(prompt, 5, temperature=0), model.generate(prompt, 5, temperature=0))


def test_a_sequence_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="exceeds the model context"):
        small_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_sliding_window_scores_every_token_once_whatever_the_stride():
    model = small_gpt()
    tokens = np.random.default_rng(0).integers(0, 97, 200).astype(np.int32)
    full = evaluate(model, tokens, 16, 16, None, torch.device("cpu"))
    overlapping = evaluate(model, tokens, 16, 4, None, torch.device("cpu"))
    assert full["val_tokens_scored"] == overlapping["val_tokens_scored"] == 199
    # more left context can only help an untrained model a little; both stay near uniform
    assert abs(full["val_loss"] - math.log(97)) < 0.3 and abs(overlapping["val_loss"] - math.log(97)) < 0.3
