"""TrainConfig: how one batch tier trains (budget, cadences, micro-batching, seeds). Presets hold one per size."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from spectral_jax.errors import UserError
from spectral_jax.fields import option, overrides_of
from spectral_jax.mesh import parse_mesh


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one batch tier trains. Token quantities are training tokens (B * T per optimizer step).

    The defaults are the paper's d12 protocol (docs/method.md §3.1, §3.2); `spectral_jax.presets` holds the
    per-preset values. `schedule_scale` multiplies every family step count (window warmup, momentum warmup,
    num_iterations) on top of the token normalisation to B, so short CPU runs see the whole schedule.
    """

    batch_size: int = option(8, "B, sequences per optimizer step", flag=False)
    micro_batch: int | None = option(None, "sequences per forward/backward (default: fit to max_micro_batch)")
    max_micro_batch: int = option(8, "largest micro-batch when micro_batch is unset")
    lr: float | Mapping[str, float] | None = option(
        None, "None: family anchors; float: multiplier; mapping: per-group peak LRs", flag=False
    )
    target_loss: float = option(3.2, "stop at the first eval at or below this val loss")
    max_tokens: int = option(10_000_000_000, "token budget per run: stop without reaching the target")
    eval_every_tokens: int = option(52_428_800, "eval cadence in training tokens")
    val_tokens: int = option(10_485_760, "validation tokens per eval")
    eval_batch: int = option(8, "sequences per eval forward")
    probe_every_evals: int = option(1, "probe spectra at every k-th eval (and at the stop eval)")
    checkpoint_every_tokens: int = option(209_715_200, "checkpoint cadence in training tokens")
    keep_checkpoints: int = option(
        2, "checkpoints kept per run (the newest; a corrupt one falls back to the one before)"
    )
    schedule_scale: float = option(1.0, "extra factor on every family step count (1 on GPU presets)")
    seed: int = option(42, "model init seed")
    data_seed: int | None = option(0, "train-stream shuffle seed (None: the reference's contiguous order)")
    skip_throughput_steps: int = option(2, "steps of every (re)start left out of the throughput (compilation)")
    log_every_seconds: float = option(10.0, "seconds between progress lines")
    mesh: str = option("", "device mesh, e.g. data:4 or data:2,fsdp:4 (default: every device on data)")

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        mb = self.resolved_micro_batch
        if self.batch_size % mb:
            raise UserError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch {mb}; "
                "pick a micro_batch that divides it"
            )
        parse_mesh(self.mesh)
        for name in ("eval_every_tokens", "val_tokens", "checkpoint_every_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def for_batch(self, batch: int, **changes) -> TrainConfig:
        """This config at tier B; a micro_batch that does not divide B falls back to the automatic one."""
        micro = self.micro_batch if self.micro_batch is None or batch % self.micro_batch == 0 else None
        return self.replace(batch_size=batch, micro_batch=micro, **changes)

    @property
    def resolved_micro_batch(self) -> int:
        if self.micro_batch is not None:
            if self.micro_batch < 1:
                raise UserError(f"micro_batch must be >= 1, got {self.micro_batch}")
            return self.micro_batch
        if self.batch_size > self.max_micro_batch:
            return math.gcd(self.batch_size, self.max_micro_batch)
        return self.batch_size


TrainOverrides = overrides_of(TrainConfig, "TrainOverrides")

__all__ = ["TrainConfig", "TrainOverrides"]
