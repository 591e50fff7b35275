"""One seed controls all randomness: every random draw in xaibench goes through a `torch.Generator`."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A seed in [0, 2**60) determined by the run seed and `parts` (shard index, method, metric):
    draws seeded this way do not depend on the order in which they run."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """Return a generator on `device`: a given generator is passed through, an int seeds a new one.

    ``None`` means seed 0, so results are reproducible unless the caller asks otherwise.
    """
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(0 if seed is None else int(seed))
    return gen
