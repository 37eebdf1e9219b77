"""Text corpora as train/validation splits: offline fixture corpora split by document, or a hub dataset.

Offline: every document (an Austen chapter, a Brown file) goes wholly to one split, chosen by a hash of its id,
so no passage is seen in training and scored in validation. Hub: `datasets.load_dataset(path, name)`, or the
same files from a local directory (`<dir>/<split>-*.parquet`, the layout the hub serves) on machines without one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.errors import MilestonesError
from impl.core.fixtures import read_documents


class DataError(MilestonesError):
    pass


class DataSource(BaseModel):
    """A profile's `data:` section: fixture corpora (offline), or a hub dataset, which `local_dir` replaces with
    a directory of `<split>-*.parquet` files in the hub's layout (machines without a hub, the fast tests).
    Milestones subclass it to name the corpora they accept and add their own fields."""
    model_config = ConfigDict(extra="forbid")
    source: Literal["offline", "hub"]
    corpus: list[str] = []  # offline: fixture names
    hub_path: str | None = None  # hub: a `datasets` dataset, e.g. Salesforce/wikitext
    hub_name: str | None = None  # its configuration, e.g. wikitext-2-raw-v1
    local_dir: str | None = None

    @model_validator(mode="after")
    def _source_fields(self):
        if self.source == "offline" and not self.corpus:
            raise ValueError("source 'offline' needs a non-empty 'corpus' list")
        if self.source == "hub" and not (self.hub_path or self.local_dir):
            raise ValueError("source 'hub' needs 'hub_path' (or 'local_dir')")
        return self


@dataclass
class Labelled:
    """Texts with class labels (w03's sentiment splits, w17's labeller and judge halves)."""
    texts: list[str]
    labels: list[int]

    def __len__(self):
        return len(self.texts)

    def head(self, n: int | None) -> "Labelled":
        return self if n is None else Labelled(self.texts[:n], self.labels[:n])


@dataclass
class TextSplits:
    train: list[str]
    val: list[str]
    description: str  # for the scorecard: what data, which split rule


def in_val(doc_id: str, val_fraction: float) -> bool:
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < val_fraction


def offline_splits(corpora: list[str], val_fraction: float) -> TextSplits:
    train, val = [], []
    for name in corpora:
        for doc in read_documents(name):
            (val if in_val(doc["id"], val_fraction) else train).append(doc["text"])
    if not train or not val:
        raise DataError(f"corpus {corpora} with val_fraction={val_fraction} leaves an empty split")
    return TextSplits(train, val, f"{'+'.join(corpora)}, {len(train)}/{len(val)} documents train/val "
                                  f"(split by sha256 of document id, val_fraction={val_fraction})")


def hub_dataset(hub_path: str | None, hub_name: str | None, local_dir: str | None, splits: tuple[str, ...]):
    """`datasets.load_dataset(hub_path, hub_name)`, or the same splits from `<local_dir>/<split>-*.parquet`."""
    import datasets

    if local_dir:
        d = Path(local_dir)
        files = {s: sorted(str(p) for p in d.glob(f"{s}-*.parquet")) for s in splits}
        missing = [s for s, f in files.items() if not f]
        if missing:
            raise DataError(f"{d}: no {', '.join(f'{s}-*.parquet' for s in missing)} files")
        import pyarrow.parquet as pq

        for split, paths in files.items():  # `datasets` cannot read a zero-row file: say which split is empty
            if sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == 0:
                raise DataError(f"{d}: the {split} split is empty ({', '.join(Path(p).name for p in paths)})")
        try:
            ds = datasets.load_dataset("parquet", data_files=files)
        except Exception as e:
            raise DataError(f"{d}: cannot read the parquet files ({type(e).__name__}: {e})") from None
        return ds, f"{local_dir} (local copy of {hub_path or 'a hub dataset'})"
    try:
        ds = datasets.load_dataset(hub_path, hub_name)
    except Exception as e:  # offline machines: say what to do instead of a hub traceback
        raise DataError(f"cannot load {hub_path}/{hub_name} from the hub ({type(e).__name__}: {e}); "
                        f"on a machine without a hub set 'data.local_dir' to a directory of "
                        f"<split>-*.parquet files") from None
    absent = [s for s in splits if s not in ds]
    if absent:
        raise DataError(f"{hub_path}/{hub_name} has no split(s) {absent}; it has {list(ds)}")
    return ds, f"{hub_path}/{hub_name or ''} (hub)"


def hub_splits(hub_path: str | None, hub_name: str | None, local_dir: str | None,
               splits: tuple[str, str] = ("train", "validation")) -> TextSplits:
    """One text per split: the rows of the `text` column concatenated, which restores the raw file."""
    ds, origin = hub_dataset(hub_path, hub_name, local_dir, splits)
    texts = ["".join(ds[s]["text"]) for s in splits]
    if not all(t.strip() for t in texts):
        raise DataError(f"{origin}: a split is empty")
    return TextSplits([texts[0]], [texts[1]], f"{origin}, splits {splits[0]}/{splits[1]}")


def hub_document_splits(hub_path: str | None, hub_name: str | None, local_dir: str | None, max_docs: int,
                        val_fraction: float) -> TextSplits:
    """A subset of a one-split document dataset (OpenWebText has only `train`): the first `max_docs` rows of
    its `text` column, each document wholly in train or validation by a hash of its row number. The hub is
    streamed, so a subset costs only its own download."""
    if local_dir:
        ds, origin = hub_dataset(hub_path, hub_name, local_dir, ("train",))
        texts = ds["train"]["text"][:max_docs]
    else:
        import datasets

        try:
            stream = datasets.load_dataset(hub_path, hub_name, split="train", streaming=True)
            texts = [row["text"] for _, row in zip(range(max_docs), stream)]
        except Exception as e:
            raise DataError(f"cannot stream {hub_path}/{hub_name} from the hub ({type(e).__name__}: {e}); "
                            f"on a machine without a hub set 'data.local_dir' to a directory of "
                            f"train-*.parquet files with a 'text' column") from None
        origin = f"{hub_path}/{hub_name or ''} (hub, streamed)"
    train, val = [], []
    for i, text in enumerate(texts):
        (val if in_val(f"{hub_path}:{i}", val_fraction) else train).append(text)
    if not train or not val:
        raise DataError(f"{origin}: {len(texts)} documents with val_fraction={val_fraction} leave an empty split")
    return TextSplits(train, val, f"{origin}, first {len(texts):,} documents: {len(train):,}/{len(val):,} "
                                  f"train/val (split by sha256 of row number, val_fraction={val_fraction})")
