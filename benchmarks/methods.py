"""Explanation methods against their reference implementations on the same work.

A random-init (seeded) torchvision ResNet-18 with 5 classes, N photographs from scikit-image's sample
data resized to 3xSxS in [0, 1] (SLIC needs real images: it merges noise into one segment), targets
0..4 cycled, best of R wall times (ours and the reference interleaved):

- CAM family against pytorch-grad-cam 1.5.7 (same model, target layer ``layer4``; FullGrad on every
  bias layer); agreement = largest absolute difference between minmax(ours) and theirs (grad-cam's maps are min-max
  scaled, ours are not; Eigen-CAM up to the SVD's sign per image). grad-cam's Ablation-CAM ablates
  `max_batch` channels of one image per forward, ours `max_batch` (image, channel) rows. Score-CAM
  differs by definition: grad-cam weights the channels by a softmax over channels of the masked
  images' target logits, xaibench (as the paper) by each masked image's target probability.
- LIME and KernelSHAP against Captum's ``Lime`` / ``KernelShap`` called image by image with Captum's
  default ``perturbations_per_eval=1`` on the same superpixels, samples and seed (agreement: the
  largest |difference|; the draws are the same, so the maps should be equal).
- The vision-transformer methods on a random ViT-Tiny (224 px) have no runnable reference here
  (lxt 2.1's ``lxt.efficient`` does not import with transformers 5): their time per image only.

    python -m benchmarks.methods [--quick] [--n 8] [--size 112] [--repeats 3] [--max-batch 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # grad-cam's Ablation-CAM draws a progress bar per image

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import xaibench  # noqa: E402
from benchmarks.harness import clock, header  # noqa: E402
from xaibench.explainers.gradient import seeded_global_rng  # noqa: E402
from xaibench.perturbation.engine import superpixel_segments  # noqa: E402
from xaibench.seeding import make_generator  # noqa: E402

CAMS = {"gradcam": "GradCAM", "hirescam": "HiResCAM", "xgradcam": "XGradCAM", "eigencam": "EigenCAM",
        "fullgrad": "FullGrad", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}
VIT = ("raw_attention", "attention_rollout", "grad_attention_rollout", "attnlrp", "hirescam", "eigencam")


def photos(n: int, size: int) -> torch.Tensor:
    """n photographs from scikit-image's sample data [n, 3, size, size] in [0, 1] (cycled when n > 6)."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
    imgs = []
    for i in range(n):
        img = torch.from_numpy(getattr(data, names[i % len(names)])()).permute(2, 0, 1)[None].float() / 255
        imgs.append(torch.nn.functional.interpolate(img, size=(size, size), mode="area"))
    return torch.cat(imgs)


def _minmax(maps: torch.Tensor) -> np.ndarray:
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return (maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-7)).numpy()


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t, out = clock(fn)
        best = min(best, t)
    return best, out


def cams(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, repeats: int, max_batch: int) -> list[dict]:
    import pytorch_grad_cam as gc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    rows = []
    targets = [ClassifierOutputTarget(int(i)) for i in t]
    for name, ref in CAMS.items():
        layers = [] if name == "fullgrad" else [model.layer4]
        reps = 1 if name in ("scorecam", "ablationcam") else repeats
        exp = xaibench.explainer(name, model, **({} if name == "fullgrad" else {"layer": "layer4"}), max_batch=max_batch)
        cam = getattr(gc, ref)(model=model, target_layers=layers)
        cam.batch_size = max_batch  # Score-CAM and Ablation-CAM: masked / ablated images per forward
        ours_s = theirs_s = float("inf")
        for _ in range(reps):
            t_a, ours = clock(lambda: exp(x, t))
            t_b, theirs = clock(lambda: cam(x, targets=targets))
            ours_s, theirs_s = min(ours_s, t_a), min(theirs_s, t_b)
        mine = _minmax(ours)
        if name == "eigencam":  # the SVD's sign: compare each image with the closer of the two
            flipped = _minmax(-ours)
            diff = np.minimum(np.abs(mine - theirs).reshape(len(x), -1).max(1),
                              np.abs(flipped - theirs).reshape(len(x), -1).max(1)).max()
        else:
            diff = float(np.abs(mine - theirs).max())
        rows.append({"method": name, "reference": f"grad-cam {ref}", "ours_s": ours_s, "reference_s": theirs_s,
                     "agreement": f"max abs diff {diff:.1e}"})
    return rows


def surrogates(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, repeats: int, max_batch: int,
               n_samples: int) -> list[dict]:
    from captum.attr import KernelShap, Lime

    rows = []
    segments = superpixel_segments(x, n_segments=50)
    for name, engine in (("lime", Lime), ("kernel_shap", KernelShap)):
        def ours(name=name) -> torch.Tensor:
            return xaibench.explainer(name, model, n_samples=n_samples, n_segments=50, seed=0,
                                      max_batch=max_batch).attribute(x, t)[:, 0]

        def captum(engine=engine) -> torch.Tensor:
            with warnings.catch_warnings(), seeded_global_rng(make_generator(0), x.device):
                warnings.simplefilter("ignore")
                return torch.cat([engine(model).attribute(x[i:i + 1], target=int(t[i]), baselines=0.0,
                                                          feature_mask=segments[i:i + 1, None], n_samples=n_samples)[:, 0]
                                  for i in range(len(x))])

        ours_s, mine = _best(ours, repeats)
        theirs_s, theirs = _best(captum, repeats)
        rows.append({"method": name, "reference": f"Captum {engine.__name__} per image, perturbations_per_eval=1",
                     "ours_s": ours_s, "reference_s": theirs_s,
                     "agreement": f"max abs diff {float((mine - theirs).abs().max()):.1e}"})
    return rows


def vit_methods(n: int, repeats: int) -> list[dict]:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5).eval()
    x = photos(n, 224)
    t = torch.arange(n) % 5
    rows = []
    for name in VIT:
        exp = xaibench.explainer(name, vit)
        s, _ = _best(lambda exp=exp: exp(x, t), repeats)
        rows.append({"method": f"{name} (ViT-Tiny 224)", "reference": "-", "ours_s": s, "reference_s": float("nan"),
                     "agreement": "-"})
    forward, _ = _best(lambda: vit(x), repeats)
    rows.append({"method": "one forward (ViT-Tiny 224)", "reference": "-", "ours_s": forward,
                 "reference_s": float("nan"), "agreement": "-"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--n-samples", type=int, default=128, help="LIME / KernelSHAP samples per image")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.size, args.repeats, args.n_samples = 2, 64, 1, 16
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    for m in model.modules():  # batch-norm statistics as after training, so that FullGrad's biases are not 0
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    x = photos(args.n, args.size)
    t = torch.arange(args.n) % 5
    info = header("cpu", n=args.n, size=args.size, max_batch=args.max_batch, n_samples=args.n_samples)
    rows = cams(model, x, t, args.repeats, args.max_batch)
    rows += surrogates(model, x, t, args.repeats, args.max_batch, args.n_samples)
    rows += vit_methods(min(args.n, 4), args.repeats)
    print(f"{info['date']}, torch {info['torch']}, {info['threads']} threads, load average {info['load']}; "
          f"ResNet-18 (random, 5 classes), N = {args.n} images of 3x{args.size}x{args.size}, "
          f"max_batch {args.max_batch}, LIME/KernelSHAP {args.n_samples} samples, 50 SLIC segments\n")
    print("| method | reference | ours (s) | reference (s) | speed-up | agreement |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ref_s = r["reference_s"]
        speed = f"{ref_s / r['ours_s']:.1f}x" if np.isfinite(ref_s) else "-"
        ref_txt = f"{ref_s:.3f}" if np.isfinite(ref_s) else "-"
        print(f"| {r['method']} | {r['reference']} | {r['ours_s']:.3f} | {ref_txt} | {speed} | {r['agreement']} |")


if __name__ == "__main__":
    main()
