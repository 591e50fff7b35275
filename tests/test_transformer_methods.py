"""Attention methods for vision transformers: a tiny timm ViT recomputed by hand from its weights
(attention from the qkv projections), and AttnLRP side by side with lxt 2.1's own rules."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.models.vision_transformer import VisionTransformer

import xaibench
from xaibench.errors import InputError


def _vit(seed: int = 0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=5, qkv_bias=True)
    vit = VisionTransformer(**(args | kw)).eval()
    with torch.no_grad():  # timm zero-initialises these: make them matter
        vit.cls_token.normal_(0, 0.5)
        vit.pos_embed.normal_(0, 0.5)
        for m in vit.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return vit


def _x(b: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def by_hand(vit: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, attention probabilities per block [B, heads, N, N]) from the weights, no timm forward."""
    tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), tokens], 1) + vit.pos_embed
    attentions = []
    for blk in vit.blocks:
        h = F.layer_norm(tokens, (tokens.shape[-1],), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        b, n, d = h.shape
        heads = blk.attn.num_heads
        q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
        attentions.append(a)
        tokens = tokens + blk.attn.proj((a @ v).transpose(1, 2).reshape(b, n, d))
        h = F.layer_norm(tokens, (d,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        tokens = tokens + blk.mlp.fc2(F.gelu(blk.mlp.fc1(h)))
    tokens = F.layer_norm(tokens, (tokens.shape[-1],), vit.norm.weight, vit.norm.bias, vit.norm.eps)
    return vit.head(tokens[:, 0]), attentions


def _grid(rows: torch.Tensor) -> torch.Tensor:
    """Class-token rows [B, N] -> the 4x4 patch grid [B, 4, 4]."""
    return rows[:, 1:].reshape(-1, 4, 4)


def test_hand_forward_is_the_model() -> None:
    vit, x = _vit(), _x(2)
    torch.testing.assert_close(by_hand(vit, x)[0], vit(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_raw_attention_is_the_class_rows_of_the_hand_attention(fusion: str) -> None:
    vit, x, t = _vit(), _x(2), torch.tensor([0, 3])
    with torch.no_grad():
        _, att = by_hand(vit, x)
    fused = {"mean": att[-1].mean(1), "max": att[-1].amax(1), "min": att[-1].amin(1)}[fusion]
    ours = xaibench.explainer("raw_attention", vit, head_fusion=fusion, upsample=False)(x, t)
    torch.testing.assert_close(ours, _grid(fused[:, 0]), rtol=1e-4, atol=1e-6)
    first = xaibench.explainer("raw_attention", vit, block=0, upsample=False)(x, t)
    torch.testing.assert_close(first, _grid(att[0].mean(1)[:, 0]), rtol=1e-4, atol=1e-6)
    assert all(blk.attn.fused_attn == timm.layers.use_fused_attn() for blk in vit.blocks)  # restored


def _rollout(att: list[torch.Tensor], fusion: str, discard: float) -> torch.Tensor:
    """Abnar & Zuidema, one image and one block at a time."""
    out = []
    for i in range(att[0].shape[0]):
        joint = torch.eye(att[0].shape[-1])
        for a in att:
            m = {"mean": a[i].mean(0), "max": a[i].amax(0), "min": a[i].amin(0)}[fusion].clone()
            if discard:
                order = m.flatten().argsort()[: int(m.numel() * discard)]
                order = order[order != 0]  # the class token's attention to itself stays
                m.view(-1)[order] = 0
            m = (m + torch.eye(m.shape[0])) / 2
            m = m / m.sum(1, keepdim=True)
            joint = m @ joint
        out.append(joint[0])
    return torch.stack(out)


@pytest.mark.parametrize(("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)])
def test_attention_rollout_matches_the_formula(fusion: str, discard: float) -> None:
    vit, x, t = _vit(), _x(3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        _, att = by_hand(vit, x)
    ours = xaibench.explainer("attention_rollout", vit, head_fusion=fusion, discard_ratio=discard, upsample=False)
    torch.testing.assert_close(ours(x, t), _grid(_rollout(att, fusion, discard)), rtol=1e-4, atol=1e-6)


def test_grad_attention_rollout_matches_the_formula() -> None:
    """Chefer et al. 2021 (ICCV): R = I, R += mean_h(ReLU(dS/dA * A)) R, block by block."""
    vit, x, t = _vit(), _x(2), torch.tensor([4, 1])
    logits, att = by_hand(vit, x)
    grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), att)
    expected = []
    for i in range(2):
        r = torch.eye(att[0].shape[-1])
        for a, g in zip(att, grads, strict=True):
            r = r + (g[i] * a[i]).clamp(min=0).mean(0) @ r
        expected.append(r[0].detach())
    ours = xaibench.explainer("grad_attention_rollout", vit, upsample=False)(x, t)
    torch.testing.assert_close(ours, _grid(torch.stack(expected)), rtol=1e-4, atol=1e-6)
    full = xaibench.explainer("grad_attention_rollout", vit)(x, t)
    assert full.shape == (2, 32, 32)


def test_attnlrp_conserves_the_logit_without_biases() -> None:
    """Bias-free (biases, class token, position embedding 0): every rule is degree-1 homogeneous, so the
    relevances add up to the logit; the plain gradient x input does not."""
    vit = _vit(depth=2)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("bias") or name in ("cls_token", "pos_embed"):
                p.zero_()  # a constant token is a bias too
    x, t = _x(3), torch.tensor([0, 2, 4])
    relevance = xaibench.explainer("attnlrp", vit).attribute(x, t)
    logits = vit(x).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logits.detach(), rtol=1e-4, atol=1e-5)
    ixg = xaibench.explainer("input_x_gradient", vit).attribute(x, t).sum((1, 2, 3))
    assert not torch.allclose(ixg, logits.detach(), rtol=1e-2)


def _lxt_patches() -> types.ModuleType:
    """lxt 2.1's ``efficient/patches.py``. Its package ``__init__`` imports a BERT patch that needs a helper
    removed from transformers 5, so the two self-contained files are loaded directly."""
    lxt = pytest.importorskip("lxt")
    root = pathlib.Path(lxt.__file__).parent / "efficient"
    saved = {k: sys.modules.get(k) for k in ("lxt.efficient", "lxt.efficient.rules", "lxt.efficient.patches")}
    try:
        pkg = types.ModuleType("lxt.efficient")
        pkg.__path__ = [str(root)]
        sys.modules["lxt.efficient"] = pkg
        for name in ("rules", "patches"):
            spec = importlib.util.spec_from_file_location(f"lxt.efficient.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        return sys.modules["lxt.efficient.patches"]
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _torchvision_copy(vit: VisionTransformer) -> torchvision.models.VisionTransformer:
    """The same network as torchvision's VisionTransformer (lxt 2.1's supported ViT)."""
    d = vit.embed_dim
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=len(vit.blocks),
                                              num_heads=vit.blocks[0].attn.num_heads, hidden_dim=d,
                                              mlp_dim=vit.blocks[0].mlp.fc1.out_features, num_classes=5).eval()
    with torch.no_grad():
        tv.conv_proj.load_state_dict(vit.patch_embed.proj.state_dict())
        tv.class_token.copy_(vit.cls_token)
        tv.encoder.pos_embedding.copy_(vit.pos_embed)
        for layer, blk in zip(tv.encoder.layers, vit.blocks, strict=True):
            layer.ln_1.load_state_dict(blk.norm1.state_dict())
            layer.ln_2.load_state_dict(blk.norm2.state_dict())
            layer.self_attention.in_proj_weight.copy_(blk.attn.qkv.weight)
            layer.self_attention.in_proj_bias.copy_(blk.attn.qkv.bias)
            layer.self_attention.out_proj.load_state_dict(blk.attn.proj.state_dict())
            layer.mlp[0].load_state_dict(blk.mlp.fc1.state_dict())
            layer.mlp[3].load_state_dict(blk.mlp.fc2.state_dict())
        tv.encoder.ln.load_state_dict(vit.norm.state_dict())
        tv.heads.head.load_state_dict(vit.head.state_dict())
    return tv


def test_attnlrp_equals_lxt_on_the_same_torchvision_vit() -> None:
    vit, x, t = _vit(), _x(2), torch.tensor([1, 3])
    tv = _torchvision_copy(vit)
    torch.testing.assert_close(tv(x), vit(x), rtol=1e-4, atol=1e-5)
    patches = _lxt_patches()
    nn = torch.nn
    originals = {cls: cls.forward for cls in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)}
    try:  # lxt's map for torchvision ViTs (lxt/efficient/models/vit_torch.py: cp_LRP), patched by lxt's own function
        patches.patch_method(patches.non_linear_forward, nn.GELU, keep_original=True)
        patches.patch_method(patches.layer_norm_forward, nn.LayerNorm)
        patches.patch_method(patches.cp_multi_head_attention_forward, nn.MultiheadAttention, keep_original=True)
        xr = x.clone().requires_grad_(True)
        tv(xr).gather(1, t[:, None]).sum().backward()
        reference = (xr * xr.grad).detach()
    finally:
        for cls, forward in originals.items():
            cls.forward = forward
            if "original_forward" in cls.__dict__:
                delattr(cls, "original_forward")
    ours = xaibench.explainer("attnlrp", vit).attribute(x, t)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    assert nn.LayerNorm.forward is originals[nn.LayerNorm]


def test_deit_distilled_and_refusals() -> None:
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5, img_size=32,
                             depth=2).eval()
    x, t = _x(2), torch.tensor([0, 1])
    for name in ("raw_attention", "attention_rollout", "grad_attention_rollout", "attnlrp"):
        maps = xaibench.explainer(name, deit, upsample=False)(x, t) if name != "attnlrp" else \
            xaibench.explainer(name, deit)(x, t)
        assert maps.shape == ((2, 2, 2) if name != "attnlrp" else (2, 32, 32)) and torch.isfinite(maps).all()
    cnn = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    with pytest.raises(InputError, match="timm vision transformer"):
        xaibench.explainer("attention_rollout", cnn)
    pooled = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=5,
                               class_token=False, global_pool="avg").eval()
    with pytest.raises(InputError, match="class token"):
        xaibench.explainer("raw_attention", pooled)
    with pytest.raises(InputError, match="head_fusion"):
        xaibench.explainer("attention_rollout", _vit(), head_fusion="median")
    with pytest.raises(InputError, match="block"):
        xaibench.explainer("raw_attention", _vit(), block=3)
