"""GPT-2 BPE through tiktoken, offline: the vocabulary ships with the package; byte tokens only when asked for.

The vocabulary file (tiktoken's r50k_base format, which is GPT-2's BPE; sha256 checked) is looked up, in order:
1. an explicit `vocab_file` argument;
2. the environment variable SPECTRAL_JAX_VOCAB;
3. the copy shipped in this package (`spectral_jax/data/gpt2.tiktoken.gz`, gzip-compressed; GPT-2's vocabulary
   from OpenAI's tiktoken, MIT licence, see `spectral_jax/data/GPT2_VOCAB_LICENSE`);
4. tiktoken's own cache ($TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache);
5. `shared/data/gpt2.tiktoken` beside the repository checkout.
Nothing is downloaded. `Tokenizer(kind="bytes")` encodes text as UTF-8 bytes (ids 0..255, EOT still 50256) and
writes `"tokenizer": "bytes"` into the shard metadata; GPT-2 never silently falls back to it: with no vocabulary
found (a broken install) it raises.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import pathlib
import tempfile

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from spectral_jax.errors import UserError

EOT_ID = 50256
GPT2_VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGED_VOCAB = pathlib.Path(__file__).with_name("gpt2.tiktoken.gz")
KINDS = ("gpt2", "bytes")


def _tiktoken_cache_candidates() -> list[pathlib.Path]:
    key = hashlib.sha1(_R50K_URL.encode()).hexdigest()
    dirs = [
        os.environ.get("TIKTOKEN_CACHE_DIR"),
        os.environ.get("DATA_GYM_CACHE_DIR"),
        os.path.join(tempfile.gettempdir(), "data-gym-cache"),
    ]
    return [pathlib.Path(d) / key for d in dirs if d]


def find_vocab_file(vocab_file: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The first existing GPT-2 vocabulary file in the documented search order, or None."""
    if vocab_file is not None:
        path = pathlib.Path(vocab_file)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} does not exist; pass a tiktoken r50k_base/gpt2 file")
        return path
    env = os.environ.get("SPECTRAL_JAX_VOCAB")
    if env:
        path = pathlib.Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"SPECTRAL_JAX_VOCAB={env} does not exist; unset it or point it at a file")
        return path
    candidates = [PACKAGED_VOCAB, *_tiktoken_cache_candidates()] + [
        _REPO_ROOT.parent / "shared" / "data" / "gpt2.tiktoken",
        _REPO_ROOT / "shared" / "data" / "gpt2.tiktoken",
    ]
    return next((p for p in candidates if p.is_file()), None)


def read_vocab(path: pathlib.Path) -> bytes:
    """The vocabulary file's bytes (gunzipped when its name ends in .gz)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def parse_ranks(contents: bytes) -> dict[bytes, int]:
    """tiktoken's format: one "base64(token) rank" per line (as tiktoken.load.load_tiktoken_bpe parses it)."""
    return {
        base64.b64decode(token): int(rank) for token, rank in (line.split() for line in contents.splitlines() if line)
    }


class Tokenizer:
    """Encodes documents to token ids. `name` is "gpt2" (tiktoken BPE) or "bytes" (only when asked for)."""

    def __init__(self, vocab_file: str | os.PathLike | None = None, *, kind: str = "gpt2"):
        if kind not in KINDS:
            raise UserError(f"unknown tokenizer {kind!r}; choose one of {KINDS}")
        self.vocab_file: pathlib.Path | None = None
        self.vocab_sha256: str | None = None
        self._enc = None
        self.name = kind
        if kind == "bytes":
            return
        path = find_vocab_file(vocab_file)
        if path is None:
            raise FileNotFoundError(
                f"no GPT-2 vocabulary found: the package's copy {PACKAGED_VOCAB} is missing (reinstall spectral-jax) "
                "and SPECTRAL_JAX_VOCAB, tiktoken's cache and shared/data/gpt2.tiktoken hold none; pass "
                "vocab_file=... or ask for byte tokens explicitly"
            )
        contents = read_vocab(path)
        self.vocab_file = path
        self.vocab_sha256 = hashlib.sha256(contents).hexdigest()
        if self.vocab_sha256 != GPT2_VOCAB_SHA256:
            raise UserError(
                f"vocabulary file {path} has sha256 {self.vocab_sha256[:12]}..., not GPT-2's "
                f"{GPT2_VOCAB_SHA256[:12]}...; it is not the r50k_base/gpt2 BPE"
            )
        self._enc = tiktoken.Encoding(
            name="r50k_base",
            pat_str=r50k_pat_str,
            mergeable_ranks=parse_ranks(contents),
            special_tokens={"<|endoftext|>": EOT_ID},
        )

    def encode(self, text: str) -> list[int]:
        """Ordinary encoding (special-token text is encoded as plain text, never as EOT)."""
        if self._enc is None:
            return list(text.encode("utf-8"))
        return self._enc.encode_ordinary(text)

    def encode_documents(self, texts: list[str], num_threads: int = 2) -> np.ndarray:
        """EOT-prefixed concatenation of documents (modded-nanogpt shards PREPEND EOT), as uint16."""
        if self._enc is None:
            parts = [[EOT_ID] + self.encode(t) for t in texts]
        else:
            parts = [[EOT_ID] + ids for ids in self._enc.encode_ordinary_batch(texts, num_threads=num_threads)]
        if not parts:
            return np.zeros((0,), np.uint16)
        return np.concatenate([np.asarray(p, dtype=np.uint16) for p in parts])

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._enc is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self._enc.decode(ids)

    def metadata(self) -> dict:
        return {
            "tokenizer": self.name,
            "vocab_file": str(self.vocab_file) if self.vocab_file else None,
            "vocab_sha256": self.vocab_sha256,
            "eot_id": EOT_ID,
        }
