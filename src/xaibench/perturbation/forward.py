"""Chunked, gradient-free scoring of a model on many inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def class_scores(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    output: str = "softmax",
    max_batch: int = 256,
) -> Tensor:
    """Score of class ``targets[i]`` for ``inputs[i]``, computed in chunks of at most `max_batch`.

    output: ``"softmax"`` (probability, the default), ``"logit"`` or ``"log_softmax"``.
    Returns float32 [N] on the inputs' device.
    """
    if output not in ("softmax", "logit", "log_softmax"):
        raise ValueError(f"output must be 'softmax', 'logit' or 'log_softmax', got {output!r}")
    out = torch.empty(inputs.shape[0], dtype=torch.float32, device=inputs.device)
    for start in range(0, inputs.shape[0], max_batch):
        stop = start + max_batch
        logits = model(inputs[start:stop]).float()
        if output == "softmax":
            logits = logits.softmax(dim=1)
        elif output == "log_softmax":
            logits = logits.log_softmax(dim=1)
        out[start:stop] = logits.gather(1, targets[start:stop, None].to(logits.device)).squeeze(1)
    return out
