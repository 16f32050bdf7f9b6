"""Choosing the next token from logits: greedy, or temperature with nucleus (top-p) sampling."""

from __future__ import annotations

import math

import numpy as np

from codegen.errors import CodegenError


class SamplingError(CodegenError):
    """A sampling option out of range; says which and what is allowed."""


def check_sampling(temperature: float, top_p: float, names: tuple[str, str] = ("temperature", "top_p")) -> None:
    """Refuse options sample() cannot honour, before any work starts; ``names`` as the caller spells them."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise SamplingError(f"{names[0]} must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise SamplingError(f"{names[1]} must be a number in (0, 1], got {top_p!r}")


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = (logits - logits.max()) / temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    order = np.argsort(-probs)
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    kept = probs[keep] / probs[keep].sum()
    return int(rng.choice(keep, p=kept))
