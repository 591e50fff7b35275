"""CAM (Zhou et al. 2016): the linear classifier's class weights applied to the last feature map.

For a network whose logits are ``W @ GAP(A) + b`` (global average pooling of the feature map A
[B, K, h, w], then one linear layer), the class activation map of class c is
``M_c = sum_k W[c, k] A_k`` [B, 1, h, w]: signed, without ReLU, as in the paper; the mean of M_c over
the positions plus ``b_c`` is the logit of c (tested). One forward, no gradient.

The feature map is the CAM layer of the other class activation maps (`find_layer`, or ``layer=``);
the classifier is the last ``nn.Linear`` whose ``in_features`` equals the layer's channels K (or
``classifier=``). On models whose head is not GAP + linear (a vision transformer's class token head)
the map is still the classifier applied to each position, which is no longer the paper's CAM: use
Grad-CAM there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.explainers.base import network, register
from xaibench.explainers.cam import CAMExplainer, get_module
from xaibench.passes import Passes


@register("cam", cost=Passes(forwards="1"), resolution="layer")
class ClassActivationMapExplainer(CAMExplainer):
    """CAM (Zhou et al. 2016): sum_k W[c, k] A_k with W the linear classifier after global average pooling.

    Raw attribution [B, 1, h, w], signed (no ReLU). Needs a GAP + linear head (see the module doc).
    """

    PARAMS = {"classifier": "name of the linear layer after the pooling (None: the last nn.Linear "
                            "whose in_features equals the layer's channels)"}

    def __init__(self, model: nn.Module, *, layer: str | None = None, classifier: str | None = None,
                 upsample: bool = True, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, layer=layer, upsample=upsample, reduce=reduce, sign=sign, max_batch=max_batch)
        if classifier is not None and not isinstance(get_module(model, classifier), nn.Linear):
            raise InputError(f"classifier {classifier!r} is not an nn.Linear layer")
        self.classifier = classifier
        self.params.update(classifier=classifier)

    def _weights(self, channels: int) -> Tensor:
        """The classifier weight [classes, K]."""
        if self.classifier is None:
            found = [n for n, m in network(self.model).named_modules()
                     if isinstance(m, nn.Linear) and m.in_features == channels]
            if not found:
                raise InputError(
                    f"CAM needs a linear classifier over the {channels} channels of layer {self.layer!r} "
                    "(global average pooling + nn.Linear); none found. Pass classifier=<module name>, "
                    "or use gradcam"
                )
            self.classifier = found[-1]
            self.params.update(classifier=self.classifier)
        fc = get_module(self.model, self.classifier)
        if fc.in_features != channels:
            raise InputError(f"classifier {self.classifier!r} takes {fc.in_features} features, but layer "
                             f"{self.layer!r} has {channels} channels")
        return fc.weight

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            _, out = self._forward(inputs)
            acts = self._spatial(out, inputs)
            w = self._weights(acts.shape[1])[targets].to(acts.dtype)  # [B, K]
            return torch.einsum("bk,bkhw->bhw", w, acts)[:, None]
