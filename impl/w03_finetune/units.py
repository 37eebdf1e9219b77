"""w03's units, the reference implementations: BERT's masking for masked-language-model pretraining (Devlin et al.
2019, section 3.1 and appendix C.2), written from the paper.

The milestone's code (mlm.py) masks with transformers' DataCollatorForLanguageModeling and keeps it;
tests/units/test_w03_twins.py binds the unit to the collator: given the same seed the unit draws what the collator
draws, in the same order (so the masks are identical), and on a large batch both hold BERT's fractions.

Shapes: B sequences, T positions.
"""
from __future__ import annotations

import torch

from impl.units import unit


@unit(rtol=0.0, atol=0.0)
def mlm_mask(input_ids: torch.Tensor, special_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
             generator: torch.Generator, probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking. Each position that is not special ([CLS], [SEP], padding: special_mask True) is chosen with
    probability `probability`; a chosen position becomes [MASK] (mask_token_id) 80% of the time, a token drawn
    uniformly from 0..vocab_size-1 10% of the time, and stays as it is 10% of the time. labels: the original token
    where chosen, -100 elsewhere. input_ids (B, T) int64, special_mask (B, T) bool -> (inputs (B, T), labels
    (B, T)), new tensors (input_ids is not changed).
    The random draws, all from `generator`, in this order and each over the whole (B, T) grid (so that the same
    seed gives the same masks, here and in transformers' DataCollatorForLanguageModeling): chosen =
    torch.bernoulli of a float32 (B, T) matrix of `probability`, 0 where special; to_mask = torch.bernoulli of
    0.8 everywhere, and chosen; to_random = torch.bernoulli of 0.5 everywhere, and chosen and not to_mask; then
    torch.randint(vocab_size, (B, T)) gives the random tokens, used where to_random."""
    shape = input_ids.shape
    chosen_p = torch.full(shape, probability).masked_fill_(special_mask.bool(), 0.0)
    chosen = torch.bernoulli(chosen_p, generator=generator).bool()
    labels = input_ids.masked_fill(~chosen, -100)
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool() & chosen
    inputs[to_mask] = mask_token_id
    to_random = torch.bernoulli(torch.full(shape, 0.5), generator=generator).bool() & chosen & ~to_mask
    random_tokens = torch.randint(vocab_size, shape, dtype=torch.long, generator=generator)
    inputs[to_random] = random_tokens[to_random]
    return inputs, labels
