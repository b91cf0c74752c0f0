"""The embedded default corpus, user text corpora, and `load_data`, the one entry point for `--data`.

Embedded corpus: the `.py` source files of the running interpreter's standard library — real text that no
one here wrote and that every Python install has, so the main job runs with no download. Files are
gathered in sorted relative-path order (site-packages and __pycache__ excluded), decoded as UTF-8 with
replacement, tokenised with EOT prepended to each file, and assigned to a split by a hash of the relative
path (so a file's split never depends on which other files exist): ~3 % val, ~3 % pool, the rest train.
The result is cached as shards under $SPECTRAL_JAX_CACHE (default ~/.cache/spectral_jax), keyed by the
interpreter version, the tokenizer and the files' (path, size, mtime) listing; it is rebuilt when any changes.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pathlib
import shutil
import sys
import sysconfig
import tempfile
import time

from spectral_jax.data.shards import ShardError, TokenDataset, load_shard_dir, write_dataset
from spectral_jax.data.tokenize import Tokenizer
from spectral_jax.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".html", ".tex", ".csv")
_SPLIT_BUCKETS = {"val": range(0, 3), "pool": range(3, 6)}  # of 100 hash buckets; the rest is train


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SPECTRAL_JAX_CACHE", pathlib.Path.home() / ".cache" / "spectral_jax"))


def stdlib_files() -> tuple[pathlib.Path, list[pathlib.Path]]:
    """(root, sorted .py files) of the running interpreter's standard library."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts and "__pycache__" not in p.parts
    )
    return root, files


def split_of(relpath: str) -> str:
    bucket = int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 100
    return next((s for s, r in _SPLIT_BUCKETS.items() if bucket in r), "train")


def _listing_key(root: pathlib.Path, files: list[pathlib.Path], extra: str) -> str:
    h = hashlib.sha1(extra.encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_text_corpus(
    root: pathlib.Path, files: list[pathlib.Path], out_dir: pathlib.Path, tokenizer: Tokenizer, source: str
) -> pathlib.Path:
    """Tokenise `files` into train/val/pool shards under out_dir (built in a temp dir, then renamed)."""
    t0 = time.time()
    by_split: dict[str, list[str]] = {"train": [], "val": [], "pool": []}
    for p in files:
        by_split[split_of(str(p.relative_to(root)))].append(p.read_bytes().decode("utf-8", errors="replace"))
    empty = [s for s, docs in by_split.items() if not docs]
    if empty:
        raise UserError(
            f"{len(files)} text files under {root} leave split(s) {empty} empty; "
            "provide more files (files are assigned to splits by a hash of their path)"
        )
    splits = {s: tokenizer.encode_documents(docs) for s, docs in by_split.items()}
    chars = sum(len(d) for docs in by_split.values() for d in docs)
    replaced = sum(d.count("\ufffd") for docs in by_split.values() for d in docs)
    meta = dict(
        tokenizer.metadata(),
        source=source,
        replacement_character_fraction=round(replaced / max(chars, 1), 6),
        root=str(root),
        num_files=len(files),
        files_per_split={s: len(d) for s, d in by_split.items()},
        python=sys.version.split()[0],
        build_seconds=round(time.time() - t0, 2),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        write_dataset(tmp, splits, meta)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "dataset.json").is_file():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "built %s corpus: %s tokens in %.1fs -> %s",
        source,
        {s: len(t) for s, t in splits.items()},
        time.time() - t0,
        out_dir,
    )
    return out_dir


def _cached_text_dataset(root, files, source, vocab_file, tokenizer_kind: str = "gpt2") -> TokenDataset:
    tokenizer = Tokenizer(vocab_file, kind=tokenizer_kind)
    key = _listing_key(root, files, f"{sys.version}|{tokenizer.name}|{tokenizer.vocab_sha256}")
    out_dir = cache_root() / "corpora" / f"{source}-{key}"
    if not (out_dir / "dataset.json").is_file():
        build_text_corpus(root, files, out_dir, tokenizer, source)
    return load_shard_dir(out_dir)


def embedded_corpus(vocab_file: str | None = None, tokenizer: str = "gpt2") -> TokenDataset:
    """The embedded default corpus (built on first use, ~15M GPT-2 tokens, cached)."""
    root, files = stdlib_files()
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library at {root}; pass --data=DIR instead")
    return _cached_text_dataset(root, files, "python-stdlib", vocab_file, tokenizer)


def text_corpus(spec: str, vocab_file: str | None = None, tokenizer: str = "gpt2") -> TokenDataset:
    """A user corpus from a directory (recursively, files with TEXT_SUFFIXES) or a glob of text files."""
    path = pathlib.Path(spec)
    if path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    else:
        files = sorted(pathlib.Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        root = pathlib.Path(os.path.commonpath([str(p.parent) for p in files])) if files else path.parent
    if not files:
        raise FileNotFoundError(
            f"--data={spec}: no shards (*.bin) and no text files ({', '.join(TEXT_SUFFIXES)}) found"
        )
    return _cached_text_dataset(
        root.resolve(), [p.resolve() for p in files], f"text-{root.name or 'files'}", vocab_file, tokenizer
    )


def load_data(spec: str = "embedded", vocab_file: str | None = None, tokenizer: str = "gpt2") -> TokenDataset:
    """Resolve `--data`: "embedded" (default corpus), a directory of .bin shards, or text files; text is tokenised
    with GPT-2's BPE (the package's vocabulary) unless `tokenizer="bytes"`."""
    if spec in ("embedded", "", None):
        return embedded_corpus(vocab_file, tokenizer)
    path = pathlib.Path(spec)
    if path.is_dir() and any(path.glob("*.bin")):
        return load_shard_dir(path)
    if path.is_file() and path.suffix == ".bin":
        raise ShardError(f"--data={spec} is a single shard; pass the directory holding train and val shards")
    return text_corpus(spec, vocab_file, tokenizer)


__all__ = ["load_data", "embedded_corpus", "text_corpus", "build_text_corpus", "cache_root", "split_of", "stdlib_files"]
