"""LR tables tuned by successive halving, one per family x preset x tokenizer (spectral_jax.lr_rules)."""
