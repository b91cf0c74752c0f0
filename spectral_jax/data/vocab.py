"""Fit a token dataset to a model's vocabulary: identity, or a compact frequency-ranked id map.

A model whose `vocab_size` holds every id of the data (and whose `eot_id` is the data's EOT) reads the data
as is. A smaller vocabulary (the CPU `tiny` tier: 8,192) gets a compact map built from the train split:
EOT -> `eot_id`, the most frequent other tokens -> their own new ids in frequency order, everything else
-> one UNK id. Counting reads at most `count_tokens` train tokens (a deterministic prefix), so the map is a
pure function of the data. The map is applied on read (TokenStream.lut), so shards are never rewritten.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from spectral_jax.data.shards import TokenDataset
from spectral_jax.errors import UserError

DEFAULT_SOURCE_EOT = 50256


@dataclasses.dataclass(frozen=True)
class VocabMap:
    """lut[old_id] = new id; `kept` = source ids that keep an id of their own, in new-id order."""

    lut: np.ndarray
    vocab_size: int
    eot_id: int
    unk_id: int | None
    coverage: float  # fraction of counted train tokens that keep their own id (EOT included)

    def describe(self) -> dict:
        return dict(
            vocab_size=self.vocab_size,
            eot_id=self.eot_id,
            unk_id=self.unk_id,
            coverage=round(self.coverage, 6),
            compact=self.unk_id is not None,
        )


def source_eot(dataset: TokenDataset) -> int:
    return int(dataset.metadata.get("eot_id", DEFAULT_SOURCE_EOT))


def compact_vocab(
    dataset: TokenDataset, vocab_size: int, *, eot_id: int = 0, count_tokens: int = 100_000_000
) -> VocabMap:
    """Frequency-ranked map of the train split onto `vocab_size` ids, one of them UNK."""
    if vocab_size < 3:
        raise UserError(f"a compact vocabulary needs at least 3 ids (EOT, UNK, one token), got {vocab_size}")
    if not 0 <= eot_id < vocab_size:
        raise UserError(f"eot_id {eot_id} outside [0, {vocab_size})")
    n = min(len(dataset.train), count_tokens)
    if n == 0:
        raise UserError("cannot build a vocabulary map from an empty train split")
    counts = np.bincount(dataset.train.read(0, n), minlength=1)
    eot = source_eot(dataset)
    size = max(len(counts), eot + 1, 65536)
    counts = np.pad(counts, (0, size - len(counts)))
    eot_count = counts[eot]
    counts[eot] = -1
    order = np.argsort(-counts, kind="stable")
    unk_id = 1 if eot_id != 1 else 0
    free = [i for i in range(vocab_size) if i not in (eot_id, unk_id)]
    kept = order[: len(free)]
    kept = kept[counts[kept] > 0]
    lut = np.full(size, unk_id, np.int32)
    lut[kept] = np.asarray(free[: len(kept)], np.int32)
    lut[eot] = eot_id
    coverage = (counts[kept].sum() + eot_count) / n
    return VocabMap(lut, vocab_size, eot_id, unk_id, float(coverage))


def fit_vocab(dataset: TokenDataset, vocab_size: int, eot_id: int) -> tuple[TokenDataset, VocabMap | None]:
    """`dataset` as a model with (vocab_size, eot_id) must read it: unchanged when every id already fits and
    EOT agrees, else through a compact map (returned, so the run directory can record it)."""
    if source_eot(dataset) == eot_id and vocab_size >= int(dataset.metadata.get("vocab_size", 50257)):
        for split in ("train", "val", "pool"):
            stream = getattr(dataset, split)
            if stream is not None:
                stream.check_ids(vocab_size, f"{split} ")
        return dataset, None
    vmap = compact_vocab(dataset, vocab_size, eot_id=eot_id)
    streams = {k: getattr(dataset, k) for k in ("train", "val", "pool")}
    mapped = {k: (v.mapped(vmap.lut) if v is not None else None) for k, v in streams.items()}
    meta = dict(dataset.metadata, vocab_map=vmap.describe())
    return TokenDataset(mapped["train"], mapped["val"], mapped["pool"], meta, dataset.root), vmap


__all__ = ["VocabMap", "compact_vocab", "fit_vocab", "source_eot"]
