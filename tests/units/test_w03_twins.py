"""w03's unit is sharp (plausible wrong maskings fail its snapshot) and it is what the milestone's masker,
transformers' DataCollatorForLanguageModeling (impl/w03_finetune/mlm.py), computes.

Two bindings. Statistics (what BERT's masking is, whatever the random stream): on a large batch the collator and
the unit both choose 15% of the maskable positions and none of the special ones, and of the chosen 80% become
[MASK], 10% a random token, 10% stay, each within 5 binomial standard deviations. Exactness (what the
milestone's collator computes): mlm.py builds its collators with `seed=`, and this transformers draws their
masks from a torch.Generator seeded with it, in the order the unit's docstring states; given a generator with
the same seed the unit returns the collator's inputs and labels exactly. (A collator built without `seed` draws
from torch's global RNG in that order instead: the same masks after torch.manual_seed(seed).) The binding tests
use the reference unit (impl/w03_finetune/units.py), whatever package --impl selects."""
import math

import pytest
import torch

from impl import units
from impl.units import check
from impl.units.cases.w03 import CLS, MASK, PAD, SEP, VOCAB, padded_batch

REF = units.catalogue("w03")["mlm_mask"]


# ---- the twins ------------------------------------------------------------------------------------------------
def masking_every_chosen_position_as_mask(input_ids, special_mask, mask_token_id, vocab_size, generator,
                                          probability=0.15):
    p = torch.full(input_ids.shape, probability).masked_fill_(special_mask.bool(), 0.0)
    chosen = torch.bernoulli(p, generator=generator).bool()
    return input_ids.masked_fill(chosen, mask_token_id), input_ids.masked_fill(~chosen, -100)


def masking_special_tokens_too(input_ids, special_mask, mask_token_id, vocab_size, generator, probability=0.15):
    return REF(input_ids, torch.zeros_like(special_mask), mask_token_id, vocab_size, generator, probability)


def labels_on_every_position(input_ids, special_mask, mask_token_id, vocab_size, generator, probability=0.15):
    inputs, _ = REF(input_ids, special_mask, mask_token_id, vocab_size, generator, probability)
    return inputs, input_ids.clone()


def masking_in_place(input_ids, special_mask, mask_token_id, vocab_size, generator, probability=0.15):
    inputs, labels = REF(input_ids, special_mask, mask_token_id, vocab_size, generator, probability)
    return input_ids.copy_(inputs), labels


TWINS = [
    ("mlm_mask", masking_every_chosen_position_as_mask),
    ("mlm_mask", masking_special_tokens_too),
    ("mlm_mask", labels_on_every_position),
    ("mlm_mask", masking_in_place),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w03"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w03", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# ---- bound to transformers' DataCollatorForLanguageModeling ------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    """A WordLevel tokenizer with w03's special tokens at w03's ids and VOCAB ids in all (no files, no hub)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    vocab.update({f"w{i}": i for i in range(5, VOCAB)})
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                  unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                  mask_token="[MASK]")
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, len(tok)) == \
        (PAD, CLS, SEP, MASK, VOCAB)
    return tok


def _rows(ids: torch.Tensor) -> list[dict]:
    return [{"input_ids": row[row != PAD].tolist()} for row in ids]  # the collator pads them back


def _fractions(ids, special, inputs, labels) -> dict[str, tuple[float, int]]:
    """(observed fraction, its denominator) of: chosen among the maskable, and among the chosen: [MASK], another
    token (random), the same token (kept; a random draw of the same token counts here, 1/VOCAB of them)."""
    chosen = labels != -100
    n = int(chosen.sum())
    assert not bool((chosen & special).any())
    assert torch.equal(labels[chosen], ids[chosen])
    return {"chosen": (n / int((~special).sum()), int((~special).sum())),
            "mask": (int((inputs[chosen] == MASK).sum()) / n, n),
            "random": (int(((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum()) / n, n),
            "kept": (int((inputs[chosen] == ids[chosen]).sum()) / n, n)}


EXPECTED = {"chosen": 0.15, "mask": 0.8, "random": 0.1 * (1 - 2 / VOCAB), "kept": 0.1 + 0.1 / VOCAB}


def _within_bounds(fractions: dict) -> None:
    for key, (observed, n) in fractions.items():
        p = EXPECTED[key]
        bound = 5 * math.sqrt(p * (1 - p) / n)  # 5 binomial standard deviations
        assert abs(observed - p) <= bound, f"{key}: {observed:.4f} of {n}, expected {p:.4f} +- {bound:.4f}"


def test_on_a_large_batch_the_unit_and_the_collator_both_hold_berts_fractions(tokenizer):
    from transformers import DataCollatorForLanguageModeling

    lengths = [256] + [int(n) for n in torch.randint(16, 257, (95,), generator=torch.Generator().manual_seed(0))]
    ids, special = padded_batch(lengths, T=256, seed=4)  # ~13,000 maskable positions, ~2,000 chosen
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=11)
    batch = collator(_rows(ids))
    assert batch["input_ids"].shape == ids.shape
    theirs = _fractions(ids, special, batch["input_ids"], batch["labels"])
    ours = _fractions(ids, special, *REF(ids, special, MASK, VOCAB, torch.Generator().manual_seed(12)))
    _within_bounds(theirs)
    _within_bounds(ours)


@pytest.mark.parametrize("seed", [0, 1234])  # 1234: mlm.py's EVAL_MASK_SEED
def test_with_the_same_seed_the_unit_draws_exactly_the_collators_masks(tokenizer, seed):
    from transformers import DataCollatorForLanguageModeling

    ids, special = padded_batch([64, 40, 64, 12, 57, 64, 33, 64], T=64, seed=5)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    batch = collator(_rows(ids))
    assert batch["input_ids"].shape == ids.shape
    inputs, labels = REF(ids, special, MASK, VOCAB, torch.Generator().manual_seed(seed))
    assert torch.equal(inputs, batch["input_ids"]) and torch.equal(labels, batch["labels"])


def test_a_collator_without_a_seed_draws_the_same_masks_from_torchs_global_rng(tokenizer):
    from transformers import DataCollatorForLanguageModeling

    ids, special = padded_batch([64, 40, 64, 12], T=64, seed=6)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(21)
        batch = collator(_rows(ids))
    inputs, labels = REF(ids, special, MASK, VOCAB, torch.Generator().manual_seed(21))
    assert torch.equal(inputs, batch["input_ids"]) and torch.equal(labels, batch["labels"])
