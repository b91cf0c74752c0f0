"""Data-split JS divergence (paper Fig. 5): activation spectra of one model on two data sources and the JS
divergence between them, against the same-source noise floor."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from spectral_jax import plots, probes, spectra
from spectral_jax.ablations.common import AblationConfig, ratio, write_ablation
from spectral_jax.checkpoints import load_model
from spectral_jax.data import SequenceSource, TokenDataset, load_data
from spectral_jax.data.vocab import fit_vocab, source_eot
from spectral_jax.errors import UserError
from spectral_jax.models import GPT, attention, make_config
from spectral_jax.presets import get_preset
from spectral_jax.records import log_stderr, read_json

SPLITS = ("pool", "val", "train")


def parse_source(spec: str) -> tuple[str, str]:
    """ "<--data spec>[:<split>]" -> (data spec, split); split one of pool (default), val, train."""
    head, sep, tail = spec.rpartition(":")
    return (head, tail) if sep and tail in SPLITS else (spec, "pool")


def _sample(dataset, split: str, seq_len: int, n: int, val_tokens: int) -> np.ndarray:
    """2n windows (T+1, stride T+1) of one split: the measurement pool for "pool", else from the split's start."""
    if split == "pool":
        return dataset.measurement_pool(seq_len, 2 * n, val_tokens=val_tokens)
    return SequenceSource(getattr(dataset, split), seq_len, stride=seq_len + 1, num_sequences=2 * n).as_array()


def _mapped(dataset, like, vmap):
    """`dataset` read through the model's vocabulary map (built on its training data `like`)."""
    for key in ("tokenizer", "vocab_sha256"):
        if dataset.metadata.get(key) != like.metadata.get(key):
            raise UserError(
                f"data source tokenised with {key}={dataset.metadata.get(key)!r} but the model's "
                f"training data uses {like.metadata.get(key)!r}; tokenise both with the same vocabulary"
            )
    if source_eot(dataset) != source_eot(like):
        raise UserError(f"data source EOT id {source_eot(dataset)} differs from the training data's {source_eot(like)}")
    if vmap is None:
        return dataset
    streams = {k: getattr(dataset, k) for k in ("train", "val", "pool")}
    return TokenDataset(
        **{k: v.mapped(vmap.lut) if v is not None else None for k, v in streams.items()},
        metadata=dataset.metadata,
        root=dataset.root,
    )


def _model_to_measure(cfg: AblationConfig):
    """(model, attention window, model info, its training data spec): a trained tier's checkpoint or a fresh init."""
    if cfg.model_dir:
        model, window, model_info = load_model(cfg.model_dir)
        sweep_json = pathlib.Path(cfg.model_dir).parent / "sweep.json"
        train_data = read_json(sweep_json)["config"]["data"] if sweep_json.is_file() else cfg.data
    else:
        config = make_config(cfg.family, cfg.preset)
        model = GPT(config, rngs=nnx.Rngs(cfg.base_seed))
        window = attention.scheduled_window(config, 0.0)
        model_info = dict(kind="init", family=cfg.family, seed=cfg.base_seed, step=0, tokens=0)
        train_data = cfg.data
    return model, window, model_info, train_data


def _source_samples(cfg: AblationConfig, like, vmap, seq_len: int, n: int, val_tokens: int) -> dict[str, np.ndarray]:
    """Input windows A1, A2, B1, B2: two disjoint halves of n sequences from each of the two data sources."""
    loaded: dict[str, Any] = {}
    samples = {}
    for tag, spec in (("A", cfg.data_a), ("B", cfg.data_b)):
        data, split = parse_source(spec)
        if data not in loaded:
            loaded[data] = _mapped(load_data(data), like, vmap)
        pool = _sample(loaded[data], split, seq_len, n, val_tokens)
        x = probes.split_windows(pool)[0]
        samples[tag + "1"], samples[tag + "2"] = x[:n], x[n:]
    return samples


def _layer_rows(spec: dict, layers, preset: str) -> list[dict]:
    """Per block: JS(A1, B1), the same-source floors JS(A1, A2) and JS(B1, B2), their ratio and each alpha_tail."""
    rows = []
    for layer in layers:
        s = {k: v[layer] for k, v in spec.items()}
        js_ab = spectra.js_divergence(s["A1"], s["B1"])
        floor_a, floor_b = spectra.js_divergence(s["A1"], s["A2"]), spectra.js_divergence(s["B1"], s["B2"])
        rows.append(
            dict(
                layer=layer,
                js_a_vs_b=js_ab,
                js_floor_a=floor_a,
                js_floor_b=floor_b,
                ratio_to_floor=ratio(js_ab, max(floor_a, floor_b)),
                alpha_tail={k: _alpha(v, preset) for k, v in s.items()},
            )
        )
    return rows


def data_split_js(cfg: AblationConfig, log: Callable[[str], None] = log_stderr) -> dict:
    """Activation spectra of one model on two data sources (A, B) and the JS divergence between them, against
    the noise floor JS(A half 1, A half 2) (and B's). Samples are n = split_sequences windows each; A1 vs B1 is
    the split comparison, A1 vs A2 / B1 vs B2 (disjoint windows of the same source) the floor."""
    name = "data_split"
    model, window, model_info, train_data = _model_to_measure(cfg)
    config = model.config
    like = load_data(train_data)
    _, vmap = fit_vocab(like, config.vocab_size, config.eot_id)
    preset = get_preset(cfg.preset)
    n = cfg.split_sequences or cfg.probe.apply(preset.probe).pool_sequences
    val_tokens = cfg.train.apply(preset.train).val_tokens
    layers = tuple(range(config.n_layer))
    chunk = probes.default_chunk(config.seq_len, n)
    samples = _source_samples(cfg, like, vmap, config.seq_len, n, val_tokens)
    log(
        f"data_split: {n} sequences x {config.seq_len} tokens per sample, A = {cfg.data_a}, B = {cfg.data_b}, "
        f"model {model_info['kind']}"
    )
    spec = {
        k: probes.activation_spectrum(model, [x[i : i + chunk] for i in range(0, n, chunk)], layers, window=window)
        for k, x in samples.items()
    }
    rows = _layer_rows(spec, layers, cfg.preset)
    last = rows[-1]
    d = cfg.path(name)
    s_last = {k: v[layers[-1]] for k, v in spec.items()}
    figs = [
        plots.save_figure(
            plots.plot_spectra(
                {
                    f"A = {cfg.data_a} (half 1)": s_last["A1"],
                    "A (half 2)": s_last["A2"],
                    f"B = {cfg.data_b} (half 1)": s_last["B1"],
                },
                title=f"activation spectra on two data sources, block {layers[-1]} ({model_info['kind']} model)\n"
                f"JS(A, B) = {last['js_a_vs_b']:.3g}; floor JS(A1, A2) = {last['js_floor_a']:.3g}",
                ylabel="normalised eigenvalue",
                window=spectra.tail_window(cfg.preset),
            ),
            d / "spectra_a_vs_b.png",
        )
    ]
    summary = dict(
        data_a=cfg.data_a,
        data_b=cfg.data_b,
        model=model_info,
        sequences_per_sample=n,
        seq_len=config.seq_len,
        window=int(window),
        layers=rows,
        js_a_vs_b=last["js_a_vs_b"],
        js_floor_a=last["js_floor_a"],
        js_floor_b=last["js_floor_b"],
        ratio_to_floor=last["ratio_to_floor"],
    )
    return write_ablation(
        cfg,
        name,
        summary,
        figs,
        dict(js_a_vs_b=last["js_a_vs_b"], js_floor_a=last["js_floor_a"], js_floor_b=last["js_floor_b"]),
    )


def _alpha(values, preset: str) -> float | None:
    try:
        return spectra.alpha(values, spectra.tail_window(preset)).alpha
    except ValueError:
        return None


__all__ = ["SPLITS", "parse_source", "data_split_js"]
