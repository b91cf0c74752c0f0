"""ModelConfig, the family chain, tier presets and exact parameter counts (docs/method.md §4, paper Table 4)."""

import dataclasses

import pytest

from spectral_jax.models import FAMILIES, ModelConfig, base_config, make_config, param_count
from spectral_jax.models.families import family_chain
from spectral_jax.optim import OptimConfig
from spectral_jax.presets import get_preset, preset_names

NAMES = [
    "baseline",
    "rope",
    "muon",
    "untied",
    "valuemix",
    "unet",
    "fixedwin",
    "flexwin",
    "vte",
    "betterwin",
    "sparsev",
    "truncrope",
    "softcap",
    "fp8head",
    "lswa",
    "attnscale",
    "sublr",
    "lswa_adam",
]
SPARSE = ["sparsev", "truncrope", "softcap", "fp8head", "lswa", "attnscale", "sublr", "lswa_adam"]

D12_COUNTS = {
    "baseline": 124_354_560,
    "rope": 123_568_128,
    "muon": 123_568_128,
    "untied": 162_201_600,
    "valuemix": 162_201_636,
    "unet": 162_201_642,
    "fixedwin": 162_201_642,
    "flexwin": 162_201_642,
    "vte": 625_803_306,
    "betterwin": 394_002_474,
    **{name: 275_742_772 for name in SPARSE},
}
SCALE_COUNTS = [
    ("flexwin", "d36", 836_567_166),
    ("betterwin", "d36", 1_995_571_326),
    ("betterwin", "d48", 3_567_206_568),
    ("sparsev", "d36", 1_023_180_960),
    ("sparsev", "d48", 1_866_752_214),
]


def test_family_names_and_order():
    assert list(FAMILIES) == NAMES
    assert preset_names()[:5] == ("tiny", "small", "d12", "d36", "d48")


def test_chain_branches_off_lswa():
    for branch in ("attnscale", "sublr", "lswa_adam"):
        assert FAMILIES[branch].parent == "lswa"
    assert family_chain("sublr") == NAMES[:15] + ["sublr"]
    assert family_chain("baseline") == ["baseline"]


@pytest.mark.parametrize("name", NAMES[1:])
def test_each_family_is_a_delta_over_its_parent(name):
    family = FAMILIES[name]
    assert family.note
    child, parent = make_config(name, "d12"), make_config(family.parent, "d12")
    changed = {f.name for f in dataclasses.fields(ModelConfig) if getattr(child, f.name) != getattr(parent, f.name)}
    assert changed and changed <= set(family.delta)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(family="nope", tier="d12"), "unknown family 'nope'; choose one of \\['baseline'"),
        (
            dict(family="rope", tier="d24"),
            "unknown preset 'd24'; choose one of \\['d12', 'd36', 'd48', 'small', 'tiny'\\]",
        ),
    ],
)
def test_unknown_family_or_tier(bad, match):
    with pytest.raises(ValueError, match=match):
        make_config(**bad)


def test_config_is_frozen_hashable_and_replaceable():
    cfg = make_config("lswa", "d12")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3
    assert hash(cfg) == hash(make_config("lswa", "d12"))
    assert cfg.replace(attn_scale=0.12) == make_config("attnscale", "d12")
    assert ModelConfig.preset("d12") == base_config(get_preset("d12").model)
    assert ModelConfig.preset("tiny").d_model == 64


def test_tier_dimensions_and_sequence_lengths():
    expected = {"d12": (12, 6, 768, 128), "d36": (36, 20, 1280, 64), "d48": (48, 25, 1600, 64)}
    for tier, dims in expected.items():
        cfg = make_config("baseline", tier)
        assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.head_dim) == dims
    assert make_config("unet", "d12").seq_len == 1024
    assert make_config("fixedwin", "d12").seq_len == 65_536
    assert make_config("betterwin", "d36").seq_len == make_config("sparsev", "d48").seq_len == 32_768
    tiny = make_config("lswa", "tiny")
    assert (tiny.seq_len, tiny.attn_block_size, tiny.window_max // tiny.attn_block_size) == (512, 16, 14)
    assert make_config("unet", "tiny").seq_len == 128
    assert (tiny.vocab_size, tiny.eot_id) == (8192, 0), "tiny reads data through a compact vocabulary"
    assert make_config("betterwin", "d12").vocab_size == 50_304 and make_config("betterwin", "d12").eot_id == 50_256


def test_scaled_rules():
    d12, d36, d48 = (make_config("sparsev", t) for t in ("d12", "d36", "d48"))
    assert (d12.no_attn_layer, d36.no_attn_layer, d48.no_attn_layer) == (7, 19, 25)
    assert d12.value_embed_layout() == (0, 1, 2) + (None,) * 6 + (0, 1, 2)
    assert d36.value_embed_layout()[:9] == (0, 1, 2) * 3 and d36.value_embed_layout().count(None) == 18
    assert d48.value_embed_layout()[-12:] == (0, 1, 2) * 4
    assert make_config("sparsev", "tiny").value_embed_layout() == (0, 1, 2, None, None, 0, 1, 2)
    assert make_config("betterwin", "d12").value_embed_layout() == (0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0)
    assert make_config("vte", "d12").n_value_chunks == 12
    assert make_config("betterwin", "d36").n_value_chunks == 18
    pattern = "".join("L" if long else "S" for long in make_config("lswa", "d12").long_window_layers())
    assert pattern == "LSSSLSSLSSSL"
    assert make_config("lswa", "tiny").long_window_layers() == (True, False, False, False) * 1 + (
        False,
        False,
        False,
        True,
    )
    assert all(make_config("sparsev", "d12").long_window_layers())


def test_dimension_overrides_rederive_scaled_rules():
    cfg = make_config("sparsev", "tiny", n_layer=4, vocab_size=512, eot_id=0)
    assert cfg.no_attn_layer == 3 and cfg.value_embed_layout() == (0, 1, 0, 1)


def test_switches_along_the_chain():
    rope, untied, valuemix = (make_config(n, "d12") for n in ("rope", "untied", "valuemix"))
    assert rope.pos == "rope" and rope.qk_norm and not rope.fused_qkv and rope.init == "gpt2"
    assert not untied.tied_head and untied.embed_norm
    assert valuemix.logit_head == "tanh" and valuemix.logit_cap == 30 and valuemix.x0_lambdas
    assert make_config("truncrope", "d12").pos == "trunc_rope"
    assert make_config("softcap", "d12").logit_cap == 15 and make_config("fp8head", "d12").fp8_head
    assert make_config("attnscale", "d12").scale == 0.12
    assert make_config("lswa", "d12").scale == pytest.approx(128**-0.5)
    sublr = make_config("sublr", "d12")
    assert (sublr.logit_head, sublr.logit_cap, sublr.attn_scale) == ("sigmoid", 30.0, 0.12)
    assert make_config("fixedwin", "d12").max_window == 1024
    assert make_config("flexwin", "d12").max_window == 1792


def test_optimizer_recipes():
    base = make_config("baseline", "d12").optim
    assert isinstance(base, OptimConfig)
    assert (base.kind, base.lr, base.weight_decay, base.grad_clip) == ("adamw", 6e-4, 0.1, None)
    muon = make_config("muon", "d12").optim
    assert (muon.kind, muon.lr_embed, muon.lr_matrix, muon.grad_clip) == ("muon", 0.0036, 0.00036, 1.0)
    untied = make_config("untied", "d12").optim
    assert (untied.lr_embed, untied.lr_head, untied.lr_matrix) == (0.3, 0.002, 0.02)
    unet = make_config("unet", "d12").optim
    assert (unet.lr_embed, unet.lr_head, unet.lr_matrix, unet.lr_scalar) == (0.6, 0.008, 0.04, 0.04)
    assert (unet.momentum_start, unet.momentum_warmup_steps) == (0.85, 500)
    sparse = make_config("sparsev", "d12").optim
    assert sparse.betas_embed == sparse.betas_scalar == (0.8, 0.95) and sparse.betas == (0.9, 0.95)
    adam = make_config("lswa_adam", "d12").optim
    assert (adam.kind, adam.lr_matrix, adam.momentum_warmup_steps) == ("adam", 0.004, 0)
    assert make_config("fixedwin", "d12").optim.reference_batch == 8
    # prefix families: the trunk's 8-sequence step in tokens (512 x 1024 at d12, as the reference; 32 x 128 at tiny)
    assert make_config("baseline", "d12").optim.reference_batch == 512
    assert make_config("unet", "tiny").optim.reference_batch == 32
    for tier in ("tiny", "d12", "d36"):
        pre, trunk = make_config("unet", tier), make_config("fixedwin", tier)
        assert pre.optim.reference_batch * pre.seq_len == trunk.optim.reference_batch * trunk.seq_len


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(seq_len=64), "wider than seq_len 64"),
        (dict(seq_len=520), "not a multiple of attn_block_size 16"),
        (dict(head_dim=16), "n_head\\*head_dim"),
        (dict(window="sliding"), "window='sliding' is not one of"),
        (dict(no_attn_layer=8), "outside \\[0, 8\\)"),
    ],
)
def test_invalid_configs_name_the_fix(change, match):
    with pytest.raises(ValueError, match=match):
        make_config("fixedwin", "tiny", **change)


@pytest.mark.parametrize("family", NAMES)
def test_d12_parameter_counts(family):
    assert param_count(family, "d12") == D12_COUNTS[family]


@pytest.mark.parametrize("family,tier,expected", SCALE_COUNTS)
def test_scale_parameter_counts(family, tier, expected):
    assert param_count(family, tier) == expected
