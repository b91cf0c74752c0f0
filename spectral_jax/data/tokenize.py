"""GPT-2 BPE through tiktoken, resolved offline, with a loud byte-level fallback.

The vocabulary file (tiktoken's r50k_base format, which is GPT-2's BPE) is looked up, in order:
1. an explicit `vocab_file` argument (experiments expose it as `--vocab_file`);
2. the environment variable SPECTRAL_JAX_VOCAB;
3. tiktoken's own cache ($TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache) under
   the name tiktoken gives the r50k_base download;
4. `shared/data/gpt2.tiktoken` beside the repository checkout (this project's offline test copy).
Nothing is downloaded. If none is found, text is encoded as UTF-8 bytes (ids 0..255, EOT still 50256),
a warning is logged, and `Tokenizer.name == "bytes"` is written into the shard metadata.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import tempfile
import warnings

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

EOT_ID = 50256
GPT2_VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)


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
    candidates = _tiktoken_cache_candidates() + [
        _REPO_ROOT.parent / "shared" / "data" / "gpt2.tiktoken",
        _REPO_ROOT / "shared" / "data" / "gpt2.tiktoken",
    ]
    return next((p for p in candidates if p.is_file()), None)


class Tokenizer:
    """Encodes documents to token ids. `name` is "gpt2" (tiktoken BPE) or "bytes" (fallback)."""

    def __init__(self, vocab_file: str | os.PathLike | None = None, *, allow_fallback: bool = True):
        path = find_vocab_file(vocab_file)
        self.vocab_file = path
        self.vocab_sha256: str | None = None
        self._enc = None
        if path is None:
            if not allow_fallback:
                raise FileNotFoundError(
                    "no GPT-2 vocabulary found (searched SPECTRAL_JAX_VOCAB, tiktoken's cache, "
                    "shared/data/gpt2.tiktoken); pass vocab_file=... or set SPECTRAL_JAX_VOCAB"
                )
            msg = (
                "NO GPT-2 VOCABULARY FOUND: falling back to byte-level tokens (ids 0..255). Results are "
                "not comparable with GPT-2 BPE runs. Set SPECTRAL_JAX_VOCAB to a tiktoken gpt2 file to fix."
            )
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            self.name = "bytes"
            return
        self.vocab_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        if self.vocab_sha256 != GPT2_VOCAB_SHA256:
            raise ValueError(
                f"vocabulary file {path} has sha256 {self.vocab_sha256[:12]}..., not GPT-2's "
                f"{GPT2_VOCAB_SHA256[:12]}...; it is not the r50k_base/gpt2 BPE"
            )
        self._enc = tiktoken.Encoding(
            name="r50k_base",
            pat_str=r50k_pat_str,
            mergeable_ranks=load_tiktoken_bpe(str(path)),
            special_tokens={"<|endoftext|>": EOT_ID},
        )
        self.name = "gpt2"

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
