"""w03's case: BERT's masking of a padded batch, from a seeded generator.

The batch is [CLS] ... [SEP] rows padded to one length, large enough that every kind of chosen position occurs
(replaced by [MASK], by a random token, kept) and that some special position would be chosen if specials were
maskable."""
from __future__ import annotations

import torch

from impl.units.cases import gen as _gen, case

PAD, CLS, SEP, MASK, VOCAB = 0, 2, 3, 4, 50  # the ids of w03's WordPiece specials: [PAD] [UNK] [CLS] [SEP] [MASK]


def padded_batch(lengths: list[int], T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [CLS] tokens [SEP] [PAD]..., tokens drawn from the non-special ids; and the special-token mask."""
    ids = torch.full((len(lengths), T), PAD, dtype=torch.long)
    body = torch.randint(5, VOCAB, (len(lengths), T), generator=_gen(seed))
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = CLS, body[i, :n - 2], SEP
    return ids, (ids == PAD) | (ids == CLS) | (ids == SEP)


@case("w03.mlm_mask")
def _mlm_mask(fn):
    ids, special = padded_batch([64, 40, 64, 12, 57, 64, 33, 64], T=64, seed=1)
    original = ids.clone()
    inputs, labels = fn(ids, special, MASK, VOCAB, _gen(2))
    inputs_30, labels_30 = fn(ids, special, MASK, VOCAB, _gen(3), probability=0.3)
    return {"inputs": inputs, "labels": labels, "input_ids_unchanged": ids - original,
            "inputs_p30": inputs_30, "labels_p30": labels_30}
