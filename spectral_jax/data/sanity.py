"""Warnings about data that would make a sweep's results meaningless without failing it: a compact vocabulary that
maps much of the text to UNK, text that was mostly not UTF-8, and token streams with near-uniform unigram
statistics (random or encrypted bytes). They go into the run records and the summary's `warnings`."""

from __future__ import annotations

import math

import numpy as np

from spectral_jax.data.shards import TokenDataset, TokenStream
from spectral_jax.data.vocab import VocabMap

MIN_COVERAGE = 0.9  # share of training tokens that keep their own id in a compact vocabulary
MAX_REPLACED = 0.05  # share of characters decoded as U+FFFD (not UTF-8)
MAX_UNIGRAM_EVENNESS = 0.97  # unigram entropy / ln(distinct ids): 1 is perfectly uniform; text is ~0.6-0.8
SAMPLE_TOKENS = 1 << 20


def unigram_evenness(tokens: np.ndarray) -> float:
    """Entropy of the unigram distribution over its maximum, ln(number of distinct ids) (NaN for < 2 ids)."""
    _, counts = np.unique(np.asarray(tokens), return_counts=True)
    if counts.size < 2:
        return math.nan
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(counts.size))


def data_warnings(dataset: TokenDataset, vmap: VocabMap | None) -> list[str]:
    """What is suspicious about `dataset` (as a model with the compact map `vmap` reads it), in words."""
    out = []
    if vmap is not None and vmap.unk_id is not None and vmap.coverage < MIN_COVERAGE:
        out.append(
            f"only {vmap.coverage:.0%} of the training tokens keep their own id in the {vmap.vocab_size:,}-id "
            "vocabulary; the rest are read as UNK, so the model learns a text with many unknown tokens"
        )
    replaced = dataset.metadata.get("replacement_character_fraction") or 0.0
    if replaced > MAX_REPLACED:
        out.append(
            f"{replaced:.0%} of the text's characters were not valid UTF-8 (decoded as U+FFFD): are these text files?"
        )
    raw = TokenStream(dataset.train.shards, dataset.train.names)  # the ids as stored, before any compact map
    n = min(len(raw), SAMPLE_TOKENS)
    evenness = unigram_evenness(raw.read(0, n)) if n else math.nan
    if evenness > MAX_UNIGRAM_EVENNESS:
        out.append(
            f"the training tokens' unigram distribution is near uniform (entropy {evenness:.3f} of its maximum over "
            f"the first {n:,} tokens; natural text is ~0.6-0.8): random or encrypted data?"
        )
    return out


__all__ = ["data_warnings", "unigram_evenness", "MIN_COVERAGE", "MAX_REPLACED", "MAX_UNIGRAM_EVENNESS"]
