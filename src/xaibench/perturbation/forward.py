"""Chunked, gradient-free scoring of a model on many inputs."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from xaibench.errors import InputError

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def forward_precision(device: torch.device, autocast: str | None) -> contextlib.AbstractContextManager:
    """The context of a metric's model forwards: ``torch.autocast`` on `device` with the dtype named
    by `autocast` (``"bfloat16"`` or ``"float16"``), or nothing at all for None (float32 as the model
    is, bitwise unchanged, and an autocast region the caller opened stays in force)."""
    if autocast is None:
        return contextlib.nullcontext()
    if autocast not in AUTOCAST_DTYPES:
        raise InputError(f"autocast must be None or one of {tuple(AUTOCAST_DTYPES)}, got {autocast!r}")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[autocast])


@torch.no_grad()
def class_scores(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    output: str = "softmax",
    max_batch: int = 256,
    autocast: str | None = None,
) -> Tensor:
    """Score of class ``targets[i]`` for ``inputs[i]``, computed in chunks of at most `max_batch`.

    output: ``"softmax"`` (probability, the default), ``"logit"`` or ``"log_softmax"``.
    autocast: the forwards' mixed precision (`forward_precision`); logits are cast to float32
    before the softmax. Returns float32 [N] on the inputs' device.
    """
    if output not in ("softmax", "logit", "log_softmax"):
        raise ValueError(f"output must be 'softmax', 'logit' or 'log_softmax', got {output!r}")
    out = torch.empty(inputs.shape[0], dtype=torch.float32, device=inputs.device)
    for start in range(0, inputs.shape[0], max_batch):
        stop = start + max_batch
        with forward_precision(inputs.device, autocast):
            logits = model(inputs[start:stop])
        logits = logits.float()
        if output == "softmax":
            logits = logits.softmax(dim=1)
        elif output == "log_softmax":
            logits = logits.log_softmax(dim=1)
        out[start:stop] = logits.gather(1, targets[start:stop, None].to(logits.device)).squeeze(1)
    return out
