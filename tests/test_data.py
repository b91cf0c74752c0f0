"""Shards, tokenisation, data views and the embedded corpus."""

import json
import time

import numpy as np
import pytest

from spectral_jax.data import (
    EOT_ID,
    MAGIC,
    SequenceSource,
    ShardError,
    Tokenizer,
    TokenStream,
    corpus,
    load_data,
    load_shard_dir,
    read_shard,
    tokenize,
    write_dataset,
    write_shard,
)
from spectral_jax.data.sanity import data_warnings
from spectral_jax.data.vocab import fit_vocab


def test_gpt2_tokenizer_offline():
    tok = Tokenizer()
    assert tok.name == "gpt2"
    assert tok.encode("Hello world") == [15496, 995]
    ids = tok.encode_documents(["Hello world", "a"])
    assert ids.dtype == np.uint16 and list(ids[:3]) == [EOT_ID, 15496, 995] and ids[3] == EOT_ID
    assert tok.decode([15496, 995]) == "Hello world"


def _no_other_vocab(monkeypatch, tmp_path):
    """Hide every vocabulary but the package's own: tiktoken's cache, SPECTRAL_JAX_VOCAB, shared/ beside the repo."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPECTRAL_JAX_VOCAB", raising=False)
    monkeypatch.setattr(tokenize.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(tokenize, "_REPO_ROOT", tmp_path / "nowhere" / "repo")


def test_the_package_ships_the_gpt2_vocabulary(tmp_path, monkeypatch):
    """A fresh install (no shared/, no tiktoken cache) finds the packaged vocabulary first and never bytes."""
    _no_other_vocab(monkeypatch, tmp_path)
    tok = Tokenizer()
    assert tok.vocab_file == tokenize.PACKAGED_VOCAB and tok.vocab_sha256 == tokenize.GPT2_VOCAB_SHA256
    assert tok.encode("Hello world") == [15496, 995]
    assert (tokenize.PACKAGED_VOCAB.parent / "GPT2_VOCAB_LICENSE").is_file()


def test_byte_tokens_only_when_asked_and_a_missing_vocabulary_is_an_error(tmp_path, monkeypatch):
    _no_other_vocab(monkeypatch, tmp_path)
    tok = Tokenizer(kind="bytes")
    assert tok.name == "bytes" and tok.metadata()["tokenizer"] == "bytes"
    assert tok.encode("Hi") == [72, 105]
    monkeypatch.setattr(tokenize, "PACKAGED_VOCAB", tmp_path / "gone.tiktoken.gz")
    with pytest.raises(FileNotFoundError, match="no GPT-2 vocabulary found"):
        Tokenizer()
    with pytest.raises(ValueError, match="unknown tokenizer"):
        Tokenizer(kind="words")


def test_explicit_vocab_file_must_exist_and_be_gpt2(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(tmp_path / "missing.tiktoken")
    bogus = tmp_path / "bogus.tiktoken"
    bogus.write_text("aGVsbG8= 0\n")
    with pytest.raises(ValueError, match="not the r50k_base/gpt2 BPE"):
        Tokenizer(bogus)


def test_shard_roundtrip_and_header(tmp_path):
    toks = np.arange(1000, dtype=np.uint16) * 7
    path = write_shard(tmp_path / "x_train_000000.bin", toks)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert list(header[:3]) == [MAGIC, 1, 1000] and path.stat().st_size == 1024 + 2000
    got = read_shard(path)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, toks)


def test_shard_errors_name_the_problem(tmp_path):
    good = write_shard(tmp_path / "a.bin", np.arange(100))
    raw = good.read_bytes()
    (tmp_path / "magic.bin").write_bytes(np.int32(123).tobytes() + raw[4:])
    with pytest.raises(ShardError, match="magic 123, expected 20240520"):
        read_shard(tmp_path / "magic.bin")
    (tmp_path / "trunc.bin").write_bytes(raw[:-10])
    with pytest.raises(ShardError, match="header says 100 tokens of 2 bytes but the file holds 190"):
        read_shard(tmp_path / "trunc.bin")
    # the dtype comes from the header: a count that is half the payload is an error, not uint32
    half = np.int32(50).tobytes()
    (tmp_path / "half.bin").write_bytes(raw[:8] + half + raw[12:])
    with pytest.raises(ShardError, match="header says 50 tokens of 2 bytes but the file holds 200"):
        read_shard(tmp_path / "half.bin")
    (tmp_path / "short.bin").write_bytes(raw[:100])
    with pytest.raises(ShardError, match="truncated"):
        read_shard(tmp_path / "short.bin")
    with pytest.raises(ValueError, match=r"\[0, 2\^32\)"):
        write_shard(tmp_path / "neg.bin", np.array([-1]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="holds no .bin shards"):
        load_shard_dir(tmp_path / "empty")
    only_train = tmp_path / "only_train"
    write_shard(only_train / "fineweb_train_000001.bin", np.arange(10))
    with pytest.raises(ShardError, match="no 'val' shards"):
        load_shard_dir(only_train)


def test_wide_shards_name_their_width_and_ids_are_checked_against_the_vocabulary(tmp_path):
    big = np.array([0, 70_000, 5, 246_864])
    path = write_shard(tmp_path / "wide.bin", big)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert list(header[:4]) == [MAGIC, 2, 4, 4] and path.stat().st_size == 1024 + 16
    np.testing.assert_array_equal(read_shard(path), big)
    raw = path.read_bytes()
    (tmp_path / "width3.bin").write_bytes(raw[:12] + np.int32(3).tobytes() + raw[16:])
    with pytest.raises(ShardError, match="token width of 3 bytes"):
        read_shard(tmp_path / "width3.bin")
    d = tmp_path / "shards"
    write_shard(d / "x_train_000000.bin", np.arange(300) % 97)
    write_shard(d / "x_val_000000.bin", np.array([1, 2, 3, 60_000, 4]))
    ds = load_shard_dir(d)
    with pytest.raises(ShardError, match=r"val shard x_val_000000\.bin holds token id 60000, but the model's vocab"):
        fit_vocab(ds, 50_304, 50_256)


def test_token_stream_crosses_shards_and_sources(tmp_path):
    a, b = np.arange(0, 50), np.arange(50, 120)
    stream = TokenStream.from_files([write_shard(tmp_path / "s0.bin", a), write_shard(tmp_path / "s1.bin", b)])
    assert len(stream) == 120
    np.testing.assert_array_equal(stream.read(45, 55), np.arange(45, 55))
    src = SequenceSource(stream, 10)  # stride T: consecutive windows share one token
    assert len(src) == 11 and list(src[1][[0, -1]]) == [10, 20]
    pool = SequenceSource(stream, 10, stride=11, start=5, num_sequences=3)
    assert list(pool[2][[0, -1]]) == [27, 37]
    with pytest.raises(ValueError, match="need 20 sequences"):
        SequenceSource(stream, 10, num_sequences=20)


def make_dataset(tmp_path):
    rng = np.random.default_rng(0)
    splits = {"train": rng.integers(0, 50257, 20_000), "val": np.arange(5_000) % 50257}
    return load_shard_dir(write_dataset(tmp_path / "ds", splits, {"tokenizer": "test"}, shard_tokens=7_000))


def test_train_stream_deterministic_per_seed(tmp_path):
    ds = make_dataset(tmp_path)
    a, b, c = (ds.train_dataset(64, 4, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a[3], b[3])
    assert a[0].shape == (4, 65) and a[0].dtype == np.int32
    assert not np.array_equal(a[0], c[0])
    contiguous = ds.train_dataset(64, 2, seed=None)
    np.testing.assert_array_equal(contiguous[0][1], ds.train.read(64, 129))
    epoch = len(SequenceSource(ds.train, 64))
    first = {tuple(a[k][i][:4]) for k in range(epoch // 4) for i in range(4)}
    assert len(first) == (epoch // 4) * 4  # one epoch visits distinct sequences


def test_validation_set_and_pool_are_fixed_and_disjoint(tmp_path):
    ds = make_dataset(tmp_path)
    val = ds.validation_set(100, 2_000)
    pool = ds.measurement_pool(100, 10, val_tokens=2_000)
    assert val.shape == (20, 101) and pool.shape == (10, 101)
    np.testing.assert_array_equal(val, ds.validation_set(100, 2_000))
    val_positions = set(range(0, 2_001))
    pool_start = int(pool[0, 0])  # val tokens are arange, so a token is its own position
    assert pool_start == 2_001 and not (set(range(pool_start, pool_start + 10 * 101)) & val_positions)
    with pytest.raises(ValueError, match="need 100 sequences"):
        ds.measurement_pool(100, 100, val_tokens=2_000)


def test_embedded_corpus_builds_fast_and_deterministically(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAL_JAX_CACHE", str(tmp_path / "cache"))
    t0 = time.time()
    ds = load_data("embedded")
    assert time.time() - t0 < 120
    meta = json.loads((ds.root / "dataset.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["source"] == "python-stdlib"
    assert len(ds.train) > 1_000_000 and len(ds.val) > 50_000 and len(ds.pool) > 50_000
    again = load_data("embedded")
    assert again.root == ds.root
    np.testing.assert_array_equal(again.val.read(0, 1000), ds.val.read(0, 1000))
    assert ds.val.read(0, 1)[0] == EOT_ID
    assert corpus.split_of("json/decoder.py") == corpus.split_of("json/decoder.py")


def test_user_text_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAL_JAX_CACHE", str(tmp_path / "cache"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(300):
        (docs / f"doc{i:03d}.txt").write_text(f"document number {i}: " + "lorem ipsum " * (i % 17 + 1))
    ds = load_data(str(docs))
    assert ds.metadata["source"] == "text-docs" and len(ds.val) > 0 and len(ds.pool) > 0
    with pytest.raises(FileNotFoundError, match="no shards"):
        load_data(str(tmp_path / "nothing-here" / "*.txt"))


def test_compact_vocabulary_maps_frequent_tokens_eot_and_unk(tmp_path):

    rng = np.random.default_rng(0)
    body = rng.zipf(1.5, 20_000) % 50_000 + 1
    tokens = np.concatenate([[50256], body, [50256], body[:500]]).astype(np.uint16)
    write_dataset(tmp_path, {"train": tokens, "val": tokens[:3000]}, {"eot_id": 50256})
    ds = load_shard_dir(tmp_path)
    same, none = fit_vocab(ds, 50304, 50256)
    assert same is ds and none is None, "a vocabulary that holds every id reads the data unchanged"
    small, vmap = fit_vocab(ds, 64, 0)
    out = small.train.read(0, len(tokens))
    assert out.max() < 64 and out[0] == 0 and out[20_001] == 0, "EOT -> 0"
    counts = np.bincount(tokens[tokens != 50256])
    top = np.argsort(-counts, kind="stable")[:62]
    kept = np.isin(tokens, top)
    assert np.all(out[kept] >= 2) and np.all(out[~kept & (tokens != 50256)] == 1), "top 62 keep ids, rest UNK"
    assert vmap.coverage == pytest.approx((kept.sum() + 2) / len(tokens))
    assert small.val.read(0, 10).max() < 64 and small.metadata["vocab_map"]["unk_id"] == 1


def test_data_that_would_make_results_meaningless_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAL_JAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    # binary garbage named .txt: decoded with replacement characters
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for i in range(200):
        (garbage / f"f{i:03d}.txt").write_bytes(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
    ds, vmap = fit_vocab(load_data(str(garbage)), 8192, 0)
    assert any("not valid UTF-8" in w for w in data_warnings(ds, vmap))
    # uniform random ids over the GPT-2 range: most map to UNK, and the unigram distribution is flat
    splits = {s: rng.integers(1, 50_257, n).astype(np.uint16) for s, n in (("train", 200_000), ("val", 20_000))}
    write_dataset(tmp_path / "uniform", splits, {"eot_id": 50_256, "vocab_size": 50_257})
    ds, vmap = fit_vocab(load_shard_dir(tmp_path / "uniform"), 8192, 0)
    warned = data_warnings(ds, vmap)
    assert any("keep their own id in the 8,192-id vocabulary" in w for w in warned)
    assert any("near uniform" in w for w in warned)
    # natural text: no warning
    docs = tmp_path / "docs"
    docs.mkdir()
    words = ["the", "model", "learns", "a", "spectrum", "of", "tokens", "and", "batch", "size"]
    for i in range(200):
        (docs / f"d{i:03d}.txt").write_text(" ".join(words[int(k)] for k in rng.zipf(1.5, 300) % len(words)))
    ds, vmap = fit_vocab(load_data(str(docs)), 8192, 0)
    assert data_warnings(ds, vmap) == []
