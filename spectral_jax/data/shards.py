"""modded-nanogpt / llm.c token shards, token streams, and the three fixed data views.

Shard format: 256 int32 header (header[0] = 20240520 magic, header[1] = version, header[2] = token count)
followed by the tokens. Version 1 (modded-nanogpt / llm.c) holds uint16 tokens; version 2 (ours, for vocabularies
past 65,536 ids) names the token width in header[3] (2 = uint16, 4 = uint32). The dtype comes from the header,
never from the payload size, and the payload must hold exactly count x width bytes. Shards are memory-mapped;
nothing is read into RAM until a window is asked for.

Views of a dataset (docs/method.md §1.2, §3.2, §5), for a sequence length T:
- train: sequences of T+1 tokens at stride T (consecutive windows share one token, as the reference
  loader), in a seeded random order that is reshuffled every epoch (seed=None keeps the reference's
  contiguous order). Batch k of the stream is a pure function of (seed, k), so the data position saved in a
  checkpoint is just the step.
- validation: the first `val_tokens` tokens of the val split, as windows of T+1 at stride T.
- measurement pool: windows of T+1 at stride T+1 ("streamshift"), read from the `pool` split when the
  dataset has one, else from the val split STARTING AFTER the validation-loss tokens. Unlike the reference
  (whose pool is the first 33.6M val tokens and so contains the whole validation-loss set) the pool is
  disjoint from the validation set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import grain
import numpy as np

from spectral_jax.errors import UserError
from spectral_jax.records import atomic_write_bytes

MAGIC = 20240520
VERSION = 1  # uint16 tokens (modded-nanogpt / llm.c)
VERSION_WIDTH = 2  # header[3] = bytes per token
WIDTHS = {2: np.uint16, 4: np.uint32}
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SPLITS = ("train", "val", "pool")


class ShardError(UserError):
    """A shard or shard directory that cannot be read; the message names the file and the fix."""


def write_shard(path: str | os.PathLike, tokens) -> pathlib.Path:
    """Write tokens as a version-1 uint16 shard (ids < 65,536) or a version-2 uint32 one, atomically."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise UserError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**32):
        raise UserError(f"token ids must lie in [0, 2^32), got [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    if tokens.size and tokens.max() >= 2**16:
        header[:4] = (MAGIC, VERSION_WIDTH, tokens.size, 4)
        payload = tokens.astype(np.uint32).tobytes()
    else:
        header[:3] = (MAGIC, VERSION, tokens.size)
        payload = tokens.astype(np.uint16).tobytes()
    atomic_write_bytes(path, header.tobytes() + payload)
    return pathlib.Path(path)


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a shard's tokens, validating header, magic, version, token width and length."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ShardError(f"shard {path} does not exist")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(
            f"shard {path} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte "
            "header; re-download or regenerate it"
        )
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(
            f"shard {path} has magic {header[0]}, expected {MAGIC}: not a modded-nanogpt/llm.c "
            "token shard (or corrupt); regenerate it with spectral_jax.data.write_shard"
        )
    if header[1] == VERSION:
        width = 2
    elif header[1] == VERSION_WIDTH and int(header[3]) in WIDTHS:
        width = int(header[3])
    elif header[1] == VERSION_WIDTH:
        raise ShardError(f"shard {path} names a token width of {header[3]} bytes; only 2 and 4 are defined")
    else:
        raise ShardError(
            f"shard {path} has version {header[1]}; versions {VERSION} (uint16) and {VERSION_WIDTH} "
            "(width in the header) are supported"
        )
    ntok = int(header[2])
    payload = size - HEADER_BYTES
    if ntok < 0 or payload != width * ntok:
        raise ShardError(
            f"shard {path}: header says {ntok} tokens of {width} bytes but the file holds {payload} payload "
            f"bytes (expected {width * max(ntok, 0)}); the file is truncated or corrupt — regenerate it"
        )
    if ntok == 0:
        return np.zeros((0,), WIDTHS[width])
    return np.memmap(path, dtype=WIDTHS[width], mode="r", offset=HEADER_BYTES, shape=(ntok,))


class TokenStream:
    """Several shards read as one virtual 1-D token array (windows may cross shard boundaries)."""

    def __init__(self, shards: list[np.ndarray], names: list[str] | None = None, lut: np.ndarray | None = None):
        names = list(names) if names else [f"shard {i}" for i in range(len(shards))]
        kept = [(s, n) for s, n in zip(shards, names) if len(s)]
        self.shards = [s for s, _ in kept]
        self.names = [n for _, n in kept]
        self.lut = lut  # optional token-id map applied on read (see spectral_jax.data.vocab)
        self._starts = np.cumsum([0] + [len(s) for s in self.shards])

    def mapped(self, lut: np.ndarray) -> TokenStream:
        """The same tokens read through the id map `lut` (lut[old_id] = new_id)."""
        return TokenStream(self.shards, self.names, np.asarray(lut, np.int32))

    @classmethod
    def from_files(cls, paths) -> TokenStream:
        paths = [pathlib.Path(p) for p in paths]
        return cls([read_shard(p) for p in paths], [p.name for p in paths])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def check_ids(self, vocab_size: int, what: str = "") -> None:
        """Every stored id is < vocab_size (one pass over the memory-mapped shards), else a ShardError naming the
        shard and its largest id."""
        for shard, name in zip(self.shards, self.names):
            top = int(np.max(shard))
            if top >= vocab_size:
                raise ShardError(
                    f"{what}shard {name} holds token id {top}, but the model's vocabulary has {vocab_size} ids: "
                    "the shards were tokenised for another vocabulary; retokenise them or pick a model that fits"
                )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int32."""
        if start < 0 or stop > len(self) or stop < start:
            raise IndexError(f"token window [{start}, {stop}) outside a stream of {len(self)} tokens")
        out = np.empty(stop - start, dtype=np.int32)
        pos = start
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while pos < stop:
            shard, base = self.shards[k], int(self._starts[k])
            take = min(stop, base + len(shard)) - pos
            out[pos - start : pos - start + take] = shard[pos - base : pos - base + take]
            pos += take
            k += 1
        return self.lut[out] if self.lut is not None else out


class SequenceSource:
    """grain random-access source: item i = tokens[start + i*stride : start + i*stride + T + 1] (int32)."""

    def __init__(
        self,
        stream: TokenStream,
        seq_len: int,
        *,
        stride: int | None = None,
        start: int = 0,
        num_sequences: int | None = None,
    ):
        if seq_len < 1:
            raise UserError(f"seq_len must be positive, got {seq_len}")
        self.stream, self.seq_len = stream, seq_len
        self.stride = seq_len if stride is None else stride
        self.start = start
        available = (len(stream) - start - (seq_len + 1)) // self.stride + 1 if len(stream) - start > seq_len else 0
        if num_sequences is None:
            num_sequences = available
        if num_sequences > available or num_sequences < 1:
            raise UserError(
                f"need {num_sequences} sequences of {seq_len + 1} tokens (stride {self.stride}) from "
                f"token {start}, but the stream has {len(stream)} tokens ({max(available, 0)} "
                "sequences); use more data, a shorter seq_len or fewer sequences"
            )
        self._len = num_sequences

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self._len:
            raise IndexError(f"sequence {i} out of range [0, {self._len})")
        a = self.start + i * self.stride
        return self.stream.read(a, a + self.seq_len + 1)

    def as_array(self) -> np.ndarray:
        """All sequences stacked, (N, T+1) int32."""
        return np.stack([self[i] for i in range(self._len)]) if self._len else np.zeros((0, self.seq_len + 1), np.int32)

    def __repr__(self) -> str:
        return f"SequenceSource(n={self._len}, T={self.seq_len}, stride={self.stride}, start={self.start})"


def _head_hash(shard: np.ndarray, n: int = 65_536) -> str:
    return hashlib.sha256(np.asarray(shard[:n]).tobytes()).hexdigest()


@dataclasses.dataclass
class TokenDataset:
    """Train / val / (optional) pool token streams of one dataset, plus its metadata."""

    train: TokenStream
    val: TokenStream
    pool: TokenStream | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    root: pathlib.Path | None = None

    def identity(self) -> dict:
        """What identifies this data for a run's records: the metadata (tokenizer, vocabulary hash, corpus build)
        without machine-local paths and timings, and per split every shard's name, token count and a hash of its
        first 65,536 tokens."""
        meta = {
            k: v
            for k, v in self.metadata.items()
            if k not in ("build_seconds", "root", "vocab_file", "python", "warnings")
        }
        shards = {}
        for split in SPLITS:
            stream = getattr(self, split)
            if stream is not None:
                shards[split] = [
                    dict(
                        name=n,
                        tokens=len(sh),
                        head_sha256=hashlib.sha256(np.asarray(sh[:65_536]).tobytes()).hexdigest(),
                    )
                    for sh, n in zip(stream.shards, stream.names)
                ]
        return dict(metadata=meta, shards=shards)

    def validation_set(self, seq_len: int, val_tokens: int) -> np.ndarray:
        """The fixed validation-loss set: the first val_tokens tokens of val as (N, T+1) windows, stride T."""
        n = val_tokens // seq_len
        if n < 1:
            raise UserError(f"val_tokens={val_tokens} is shorter than one sequence of {seq_len} tokens")
        return SequenceSource(self.val, seq_len, num_sequences=n).as_array()

    def measurement_pool(self, seq_len: int, num_sequences: int, *, val_tokens: int) -> np.ndarray:
        """The fixed spectral pool, (N, T+1), disjoint from the validation set (see module docstring)."""
        if self.pool is not None:
            src = SequenceSource(self.pool, seq_len, stride=seq_len + 1, num_sequences=num_sequences)
        else:
            start = (val_tokens // seq_len) * seq_len + 1
            src = SequenceSource(self.val, seq_len, stride=seq_len + 1, start=start, num_sequences=num_sequences)
        return src.as_array()

    def train_dataset(
        self, seq_len: int, batch_size: int, *, seed: int | None = 0, rows: tuple[int, int] | None = None
    ):
        """grain MapDataset: item k = batch k, (batch_size, T+1) int32, infinite, reshuffled per epoch. With `rows`
        = (lo, hi), item k holds only rows lo..hi-1 of batch k (one process's share of the global batch), and only
        those sequences are read."""
        ds = grain.MapDataset.source(SequenceSource(self.train, seq_len))
        if seed is not None:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat()
        if rows is None:
            return ds.batch(batch_size, batch_fn=np.stack)
        lo, hi = rows
        if not 0 <= lo < hi <= batch_size:
            raise UserError(f"rows {rows} are not a slice of a batch of {batch_size}")
        return grain.MapDataset.range(0, len(ds) // batch_size).map(
            lambda k: np.stack([ds[k * batch_size + i] for i in range(lo, hi)])
        )


def find_shards(directory: str | os.PathLike, split: str) -> list[pathlib.Path]:
    """Sorted shard files whose underscore-separated name holds the split: fineweb_train_000001.bin, val_000000.bin."""
    return sorted(p for p in pathlib.Path(directory).glob("*.bin") if split in p.stem.split("_"))


def load_shard_dir(directory: str | os.PathLike) -> TokenDataset:
    """Open a directory of shards (train and val required, pool optional) with its dataset.json if any."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ShardError(f"data directory {directory} does not exist")
    if not any(directory.glob("*.bin")):
        raise ShardError(
            f"data directory {directory} holds no .bin shards; point --data at a directory of "
            "modded-nanogpt shards (fineweb_train_*.bin, fineweb_val_*.bin) or at text files"
        )
    streams = {}
    for split in SPLITS:
        files = find_shards(directory, split)
        if not files and split != "pool":
            raise ShardError(
                f"data directory {directory} has no '{split}' shards (expected names like fineweb_{split}_000000.bin)"
            )
        streams[split] = TokenStream.from_files(files) if files else None
    meta_path = directory / "dataset.json"
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return TokenDataset(streams["train"], streams["val"], streams["pool"], metadata, directory)


def write_dataset(
    directory: str | os.PathLike, splits: dict[str, np.ndarray], metadata: dict, shard_tokens: int = 100_000_000
) -> pathlib.Path:
    """Write split token arrays as shards `{split}_{k:06d}.bin` plus dataset.json (written last, atomically,
    so a directory with dataset.json is complete)."""
    directory = pathlib.Path(directory)
    counts = {}
    for split, tokens in splits.items():
        counts[split] = int(len(tokens))
        for k, a in enumerate(range(0, max(len(tokens), 1), shard_tokens)):
            write_shard(directory / f"{split}_{k:06d}.bin", tokens[a : a + shard_tokens])
    meta = dict(metadata, tokens=counts)
    atomic_write_bytes(directory / "dataset.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return directory
