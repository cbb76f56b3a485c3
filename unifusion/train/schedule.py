"""When things happen in a training run: the learning-rate schedule and the every-N-steps events.

Owns the learning rate of each step (linear warm-up, constant, then an optional linear decay to 0: the
warm-up-stable-decay schedule, which lets a run be extended by resuming a stable-phase checkpoint with a decay
added) and the rule for periodic events (logs, checkpoints, previews, evaluations: every N steps and at the last).
"""
from __future__ import annotations

__all__ = ["lr_at", "due", "first_lr_change"]


def lr_at(s: int, lr: float, warmup: int = 0, decay_start: int = 0, decay_end: int = 0) -> float:
    """The learning rate of step `s` (0-based): `lr` reached linearly over `warmup` steps, then constant, then
    (if `decay_end`) decayed linearly to 0 between `decay_start` and `decay_end`."""
    out = lr * min(1.0, (s + 1) / warmup) if warmup else lr
    if decay_end and s >= decay_start:
        out *= max(0.0, (decay_end - s) / (decay_end - decay_start))
    return out


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic event falls after step `step` (1-based count of steps done): every `every` steps (0:
    never) and after the last step `last`."""
    return bool(every and step % every == 0) or step == last


def first_lr_change(old: dict, new: dict, steps: int) -> int | None:
    """The first of steps `0 .. steps - 1` whose learning rate differs between two schedules (`lr_at`'s keyword
    arguments), or None: a resumed run may change its schedule only where it has not been."""
    return next((s for s in range(steps) if lr_at(s, **old) != lr_at(s, **new)), None)
