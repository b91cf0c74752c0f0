"""Token data: modded-nanogpt shards, GPT-2 tokenisation, the embedded default corpus."""

from spectral_jax.data.corpus import embedded_corpus, load_data, text_corpus
from spectral_jax.data.shards import (
    MAGIC,
    SequenceSource,
    ShardError,
    TokenDataset,
    TokenStream,
    atomic_write_bytes,
    find_shards,
    load_shard_dir,
    read_shard,
    write_dataset,
    write_shard,
)
from spectral_jax.data.tokenize import EOT_ID, Tokenizer, find_vocab_file

__all__ = [
    "EOT_ID",
    "MAGIC",
    "SequenceSource",
    "ShardError",
    "TokenDataset",
    "TokenStream",
    "Tokenizer",
    "atomic_write_bytes",
    "embedded_corpus",
    "find_shards",
    "find_vocab_file",
    "load_data",
    "load_shard_dir",
    "read_shard",
    "text_corpus",
    "write_dataset",
    "write_shard",
]
