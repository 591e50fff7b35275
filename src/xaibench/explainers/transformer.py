"""Methods that read a vision transformer's attention: raw attention, attention rollout, gradient-weighted
attention rollout, and AttnLRP (lxt's rules for vision transformers).

For timm vision transformers with a class token (ViT, DeiT; any module with ``blocks``,
``patch_embed``, ``num_prefix_tokens`` and a ``cls_token``, whose blocks have a timm ``Attention``
as ``attn``). Swin (windowed attention, no class token) and models pooled without a class token
are refused with an InputError.

Attention A_l [B, heads, N, N] of block l (N = prefix + patch tokens, rows attend to columns) is
captured by a forward hook on ``attn.attn_drop``, with ``fused_attn`` switched off during the call
(scaled_dot_product_attention never materialises A) and restored after. Token maps are the class
token's row restricted to the patch columns, arranged on the patch grid [B, 1, h, w] and upsampled
bilinearly to the input as the CAMs are (``upsample=False``: the grid).

- raw attention: ``fuse(A_L)[CLS, patches]`` of block `block` (default the last), ``fuse`` the
  head mean, max or min (`head_fusion`).
- attention rollout (Abnar & Zuidema 2020): per block ``fuse(A_l)``, optionally the smallest
  `discard_ratio` of its entries per image set to 0 (never CLS->CLS, as in Gildenblat's
  vit-explain), then ``0.5 A + 0.5 I`` (the residual connection), rows renormalised to sum 1;
  the rollout is the product ``A_L ... A_1``.
- gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, ICCV, "Generic attention-model
  explainability"): ``Abar_l = mean_heads(ReLU(dS/dA_l * A_l))``, ``R = I``, ``R <- R + Abar_l R``
  for l = 1..L, S the target logit. This is the gradient x attention rule, *not* the LRP-based
  "transformer attribution" of Chefer, Gur & Wolf 2021 (CVPR), whose attention relevances need
  LRP through every layer.
- AttnLRP (Achtibat et al. 2024) with the rule set lxt 2.1 uses for vision transformers (its
  "efficient" gradient x input form): the identity rule on the MLP activation (relevance
  ``out / in * grad``) and on LayerNorm's scaling (its standard deviation a constant of the
  graph), CP-LRP inside attention (no relevance through the softmax: queries and keys constants,
  relevance through the values), plain gradients elsewhere (the epsilon rule for linear maps);
  relevance = gradient x input at the network's input (after xaibench's normalisation wrapper).
  Applied to timm's modules with forward hooks (nothing patched globally). lxt 2.1 itself patches
  torchvision's ViT classes only, globally, and its ``lxt.efficient`` package does not import
  with transformers 5 (its BERT patch imports a removed helper), so xaibench does not call it:
  the tests compare these hooks with lxt's own patches on a torchvision ViT with the same weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xaibench.errors import InputError
from xaibench.explainers.base import Explainer, network, register, upsample
from xaibench.explainers.cam import token_grid, vit_module
from xaibench.passes import Passes

HEAD_FUSIONS = ("mean", "max", "min")


def vision_transformer(model: nn.Module, method: str) -> nn.Module:
    """The timm vision transformer inside `model`, checked to have a class token and timm attention."""
    vit = vit_module(model)
    if vit is None:
        raise InputError(f"method {method!r} needs a timm vision transformer (ViT, DeiT) with a class token; "
                         "Swin and convolutional networks are not supported: use a CAM or a gradient method")
    vit = vit[1]
    if getattr(vit, "cls_token", None) is None:
        raise InputError(f"method {method!r} reads the class token's attention: this vision transformer has none")
    for i, block in enumerate(vit.blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "fused_attn") or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
            raise InputError(f"method {method!r}: block {i} has no timm Attention module 'attn'")
    return vit


@contextlib.contextmanager
def attention_maps(vit: nn.Module) -> Iterator[list[Tensor]]:
    """Collect each block's attention probabilities [B, heads, N, N] (in the graph) during forwards."""
    maps: list[Tensor] = []
    attns = [block.attn for block in vit.blocks]
    fused = [a.fused_attn for a in attns]
    hooks = [a.attn_drop.register_forward_hook(lambda _m, _i, out: maps.append(out)) for a in attns]
    try:
        for a in attns:
            a.fused_attn = False
        yield maps
    finally:
        for a, f in zip(attns, fused, strict=True):
            a.fused_attn = f
        for h in hooks:
            h.remove()


def fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    """[B, heads, N, N] -> [B, N, N]: mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    return attention.amax(dim=1) if head_fusion == "max" else attention.amin(dim=1)


def rollout(attentions: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout [B, N, N] of per-block attentions (Abnar & Zuidema 2020; see the module doc)."""
    result = None
    for attention in attentions:
        a = fuse_heads(attention, head_fusion)
        b, n, _ = a.shape
        if discard_ratio > 0:
            flat = a.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, low, True)
                drop[:, 0] = False
                a = flat.masked_fill(drop, 0).view(b, n, n)
        a = 0.5 * a + 0.5 * torch.eye(n, device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    assert result is not None
    return result


class TransformerExplainer(Explainer):
    """Shared machinery: the class token's row over the patch tokens, on the patch grid, upsampled."""

    PARAMS = {"upsample": "upsample bilinearly to the input size (False: the patch grid)"}

    def __init__(self, model: nn.Module, *, upsample: bool = True, reduce: str | None = None,
                 sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.vit = vision_transformer(model, self.name)
        self.upsample = bool(upsample)
        self.params.update(upsample=upsample)

    def _token_map(self, rows: Tensor, inputs: Tensor) -> Tensor:
        """Class-token rows [B, N] -> [B, 1, h, w] over the patch tokens."""
        patches = rows[:, int(self.vit.num_prefix_tokens):]
        return token_grid(patches[:, :, None], (inputs.shape[2], inputs.shape[3]), "the vision transformer")

    def _attentions(self, inputs: Tensor) -> list[Tensor]:
        with torch.no_grad(), attention_maps(self.vit) as maps:
            self.model(inputs)
        return maps

    def _resize(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        return upsample(maps, size) if self.upsample else maps


def _head_fusion(value: str) -> str:
    if value not in HEAD_FUSIONS:
        raise InputError(f"head_fusion must be one of {HEAD_FUSIONS}, got {value!r}")
    return value


@register("raw_attention", cost=Passes(forwards="1"), resolution="layer", architectures="vit")
class RawAttentionExplainer(TransformerExplainer):
    """Raw attention: the class token's attention to the patches in one block, heads fused.

    Class-agnostic (the target is ignored). Raw attribution [B, 1, h, w] (non-negative).
    """

    PARAMS = {"block": "index of the block whose attention is read (negative: from the end)",
              "head_fusion": "'mean' | 'max' | 'min' over heads"}

    def __init__(self, model: nn.Module, *, block: int = -1, head_fusion: str = "mean", upsample: bool = True,
                 reduce: str | None = None, sign: str | None = None, max_batch: int = 64) -> None:
        super().__init__(model, upsample=upsample, reduce=reduce, sign=sign, max_batch=max_batch)
        depth = len(self.vit.blocks)
        if not isinstance(block, int) or not -depth <= block < depth:
            raise InputError(f"block must be an int in [{-depth}, {depth}), got {block!r}")
        self.block = block
        self.head_fusion = _head_fusion(head_fusion)
        self.params.update(block=block, head_fusion=head_fusion)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        attention = fuse_heads(self._attentions(inputs)[self.block], self.head_fusion)
        return self._token_map(attention[:, 0], inputs)


@register("attention_rollout", cost=Passes(forwards="1"), resolution="layer", architectures="vit")
class AttentionRolloutExplainer(TransformerExplainer):
    """Attention rollout (Abnar & Zuidema 2020): product over blocks of 0.5 A + 0.5 I (rows renormalised).

    Class-agnostic. Raw attribution [B, 1, h, w] (non-negative).
    """

    PARAMS = {"head_fusion": "'mean' | 'max' | 'min' over heads",
              "discard_ratio": "fraction of each block's smallest attention entries set to 0 (0: none)"}

    def __init__(self, model: nn.Module, *, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 upsample: bool = True, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, upsample=upsample, reduce=reduce, sign=sign, max_batch=max_batch)
        self.head_fusion = _head_fusion(head_fusion)
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise InputError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.discard_ratio = float(discard_ratio)
        self.params.update(head_fusion=head_fusion, discard_ratio=discard_ratio)

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        joint = rollout(self._attentions(inputs), self.head_fusion, self.discard_ratio)
        return self._token_map(joint[:, 0], inputs)


def gradient_rollout(attentions: list[Tensor], grads: list[Tensor]) -> Tensor:
    """R = I; R <- R + mean_heads(ReLU(grad * A)) R over the blocks in order (Chefer et al. 2021, ICCV)."""
    b, _, n, _ = attentions[0].shape
    relevance = torch.eye(n, device=attentions[0].device, dtype=attentions[0].dtype).expand(b, n, n)
    for a, g in zip(attentions, grads, strict=True):
        relevance = relevance + F.relu(g * a).mean(dim=1) @ relevance
    return relevance


@register("grad_attention_rollout", cost=Passes(forwards="1", backwards="1"), resolution="layer", architectures="vit")
class GradAttentionRolloutExplainer(TransformerExplainer):
    """Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, ICCV): R <- R + mean_h(ReLU(dS/dA * A)) R.

    The gradient x attention rule of generic attention-model explainability, not the LRP-based
    transformer attribution (CVPR 2021). Raw attribution [B, 1, h, w]: R's class-token row over the
    patches.
    """

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.enable_grad(), attention_maps(self.vit) as maps:
            x = inputs.detach().requires_grad_(True)  # a graph even when the weights are frozen
            score = self.model(x).gather(1, targets[:, None]).sum()
            grads = torch.autograd.grad(score, maps)
        relevance = gradient_rollout([m.detach() for m in maps], [g.detach() for g in grads])
        return self._token_map(relevance[:, 0], inputs)


class _IdentityRule(torch.autograd.Function):
    """Element-wise activation under the identity rule: relevance out/in * grad (gradient x input form)."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor) -> Tensor:
        ctx.save_for_backward(out / (inp + 1e-10))
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return ratio * grad, None


def _layer_norm_identity(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm with its standard deviation a constant of the graph (identity rule on the scaling)."""
    centred = x - x.mean(dim=-1, keepdim=True)
    y = centred / (centred.pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt().detach()
    if norm.weight is not None:
        y = y * norm.weight
    return y + norm.bias if norm.bias is not None else y


@contextlib.contextmanager
def attnlrp_rules(vit: nn.Module) -> Iterator[None]:
    """Apply the AttnLRP / CP-LRP rules to a timm ViT with forward hooks (removed on exit; see the module doc)."""
    hooks = [m.register_forward_hook(lambda mod, inp, _out: _layer_norm_identity(mod, inp[0]))
             for m in vit.modules() if isinstance(m, nn.LayerNorm)]
    for block in vit.blocks:
        for norm in (block.attn.q_norm, block.attn.k_norm):  # CP-LRP: queries and keys carry no relevance
            hooks.append(norm.register_forward_hook(lambda _m, _i, out: out.detach()))
        hooks.append(block.mlp.act.register_forward_hook(lambda _m, inp, out: _IdentityRule.apply(inp[0], out.detach())))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@register("attnlrp", cost=Passes(forwards="1", backwards="1"), resolution="input", architectures="vit")
class AttnLRPExplainer(Explainer):
    """AttnLRP (Achtibat et al. 2024) with lxt 2.1's vision-transformer rules (CP-LRP in attention).

    With the biases, class token and position embedding at 0 the relevances add up to the target
    logit (conservation).

    Relevance = gradient x input at the network's input under the rules, raw attribution [B, C, H, W];
    default map: signed sum over channels.
    """

    def __init__(self, model: nn.Module, *, reduce: str | None = None, sign: str | None = None,
                 max_batch: int = 64) -> None:
        super().__init__(model, reduce=reduce, sign=sign, max_batch=max_batch)
        self.vit = vision_transformer(model, self.name)
        for i, block in enumerate(self.vit.blocks):
            if not isinstance(getattr(getattr(block, "mlp", None), "act", None), nn.Module):
                raise InputError(f"attnlrp: block {i} has no MLP activation module 'mlp.act'")

    def _attribute(self, inputs: Tensor, targets: Tensor) -> Tensor:
        seen: list[Tensor] = []
        hook = network(self.model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            with torch.enable_grad(), attnlrp_rules(self.vit):
                x = inputs.detach().requires_grad_(True)
                score = self.model(x).gather(1, targets[:, None]).sum()
                (grad,) = torch.autograd.grad(score, seen[0])
        finally:
            hook.remove()
        return seen[0].detach() * grad
