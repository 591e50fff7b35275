"""The GPU path, checked and timed in one run: ``python -m benchmarks.gpu --out gpu.json`` (or ``make gpu-check``).

Three parts, each recorded (a failing item is reported and the exit status is 1; the rest still runs):

1. **Device tests**: ``pytest -m device tests`` with ``XAIBENCH_TEST_DEVICE`` set to the device
   (tests/test_device_paths.py: explainers, engine, metrics, a trainer and a fine-tuner step,
   streaming under Lightning, the runner end to end).
2. **Same rows on the CPU and the device**: one seeded runner config (a random-init digits CNN,
   32 digits, saliency / Grad-CAM / IG x deletion, insertion, ROAD, sparseness; nothing that draws
   random numbers, since a CUDA generator draws other numbers than a CPU one), run on both, rows
   matched by (image, method, metric); every score within ``ROWS_ATOL + ROWS_RTOL * |cpu|``
   (float32 on both: TF32 is switched off for this part).
3. **Timings** on torchvision ResNet-50 (random weights) at 224 px, 256 random images, maps of the
   image's own channel mean (any fixed maps do; ranking is part of the metric's cost):
   - deletion / insertion (20 steps, black baseline, autotimm's normalisation) and ROAD (10, 30,
     50, 70, 90 %, MoRF, no noise), xaibench batched (``max_batch=128``) against the pure forward
     cost (the same number of images through `class_scores` at the same batch), against a
     per-image loop (``xaibench.compat.ExplanationMetrics``, autotimm's facade, called once per
     image as autotimm users do, on 32 images; and one forward per perturbed image at batch 1,
     what an unbatched implementation pays at least), against Quantus 0.6.0 where it runs (ROAD,
     4 images), and with ``autocast="bfloat16"`` (deletion, insertion: time and the largest
     relative score difference to float32);
   - Grad-CAM, integrated gradients (32 steps) and SmoothGrad (16 samples) on 128 images, batch
     64, against Captum's ``LayerGradCam`` (+ bilinear upsampling), ``IntegratedGradients`` and
     ``NoiseTunnel(Saliency)`` at the same settings and batch;
   - a baseline, an FP and an AP training epoch (`benchmarks.training_cost.epoch_seconds`: the
     real trainer; ResNet-18 on the 1257 digits training images at 64 px, batch 64, best of 2 epochs).
   Every item: best wall time of 2 calls after one warm-up call (references: one call), images
   per second, the ratio to xaibench's time per image, and peak memory (CUDA:
   ``torch.cuda.max_memory_allocated`` above the memory allocated before, reset per item; CPU:
   peak resident set growth).

Sizes (`FULL`) are an estimate for one H100-class GPU, not yet a measurement: about 130,000
ResNet-50 forwards at 224 px for the metrics (warm-up and repeats included) and ~150,000 forward
equivalents for the explainers, i.e. about 1-2 minutes at ~3,000 images/s, plus ~5,000 ROAD
imputations on the GPU, three short training runs and the device tests (a minute or two each):
about 4-6 minutes in all, under the 8-minute target. ``--device cpu --quick`` (`QUICK`) runs the
same code paths at tiny sizes (ResNet-18 on 4 images of 32 px, the device tests of the engine
only, one torch thread) in about half a minute on an idle 2-core CPU; tests/test_gpu_script.py
runs it.

Output: a markdown table on stdout and, with ``--out``, a JSON file with the device name, torch,
CUDA and cuDNN versions, the date, the command, the sizes and every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import xaibench
from benchmarks.harness import Counting, best_of, peak_memory
from benchmarks.training_cost import epoch_seconds
from xaibench.compat import ExplanationMetrics
from xaibench.conformance import quiet_quantus
from xaibench.devices import resolve_device
from xaibench.errors import InputError
from xaibench.models import architecture, save_model, unwrap
from xaibench.perturbation.forward import class_scores

REPO = Path(__file__).resolve().parents[1]
ROWS_ATOL, ROWS_RTOL = 1e-4, 1e-3  # part 2: |device - cpu| <= ROWS_ATOL + ROWS_RTOL * |cpu| for every score


@dataclass(frozen=True)
class Sizes:
    model: str  # the timed classifier (random weights)
    n: int  # images timed per metric
    image: int  # pixels per side
    steps: int  # deletion / insertion steps
    road_percentages: tuple[int, ...]
    max_batch: int
    loop_n: int  # images of the per-image loops
    quantus_n: int
    explain_n: int
    explain_batch: int
    ig_steps: int
    sg_samples: int
    repeats: int
    warmup: bool  # one untimed call before the timed ones
    rows_n: int  # images of the CPU / device row comparison
    train_model: str
    train_image: int | None
    train_n: int | None
    train_batch: int
    train_epochs: int
    tests: tuple[str, ...]  # pytest arguments of part 1


FULL = Sizes(model="torchvision:resnet50", n=256, image=224, steps=20, road_percentages=(10, 30, 50, 70, 90),
             max_batch=128, loop_n=32, quantus_n=4, explain_n=128, explain_batch=64, ig_steps=32, sg_samples=16,
             repeats=2, warmup=True, rows_n=32, train_model="torchvision:resnet18", train_image=64, train_n=None,
             train_batch=64, train_epochs=2, tests=("tests",))
QUICK = Sizes(model="torchvision:resnet18", n=4, image=32, steps=4, road_percentages=(20, 60), max_batch=8, loop_n=2,
              quantus_n=1, explain_n=2, explain_batch=2, ig_steps=4, sg_samples=4, repeats=1, warmup=False, rows_n=4,
              train_model="builtin:digits-cnn", train_image=None, train_n=32, train_batch=16, train_epochs=1,
              tests=("tests/test_device_paths.py", "-k", "engine"))


# --- part 1: the device tests -----------------------------------------------------------------


def device_tests(device: str, sizes: Sizes) -> dict[str, Any]:
    """``pytest -m device`` on `device` in a subprocess; its exit status and summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-m", "device",
           *sizes.tests]
    env = {**os.environ, "XAIBENCH_TEST_DEVICE": device}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"command": f"XAIBENCH_TEST_DEVICE={device} " + " ".join(cmd[1:]), "returncode": done.returncode,
            "summary": lines[-1] if lines else done.stderr[-500:], "seconds": time.perf_counter() - start,
            "output_tail": "" if done.returncode == 0 else (done.stdout + done.stderr)[-4000:]}


# --- part 2: the same rows on the CPU and the device ------------------------------------------


def same_rows(device: str, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """Run one seeded config on the CPU and on `device`; compare the scores row by row."""
    from xaibench.runner import parse_config, run
    from xaibench.store import load_results

    model = tmp / "digits-cnn.pt"
    save_model(architecture("builtin:digits-cnn", seed=0), model, spec="builtin:digits-cnn")
    raw = {"seed": 0, "shard_size": 16, "model": {"spec": f"file:{model}"},
           "data": {"spec": "builtin:digits", "n": sizes.rows_n},
           "methods": {"saliency": {}, "gradcam": {}, "integrated_gradients": {"steps": 16}},
           "metrics": {"deletion": {"steps": 10}, "insertion": {"steps": 10},
                       "road": {"percentages": [20, 60], "noise": 0.0, "output": "softmax"}, "sparseness": {}}}
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        rows = {}
        for label, d in (("cpu", "cpu"), ("device", device)):  # two runs, also when the device is the CPU
            out = run(parse_config({**raw, "device": d}), tmp / f"run-{label}", progress=False, overwrite=True)
            rows[label] = load_results(out).set_index(["image_id", "method", "metric"]).sort_index()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    cpu, dev = rows["cpu"]["score"], rows["device"]["score"]
    if not cpu.index.equals(dev.index):
        raise AssertionError("the CPU and device runs have different rows")
    diff = (dev - cpu).abs()
    over = (diff > ROWS_ATOL + ROWS_RTOL * cpu.abs()) | (dev.isna() != cpu.isna())
    worst = diff.groupby(level="metric").max()
    return {"rows": int(len(cpu)), "tolerance": f"|device - cpu| <= {ROWS_ATOL} + {ROWS_RTOL} |cpu|",
            "max_abs_diff": float(diff.max()), "max_abs_diff_per_metric": {k: float(v) for k, v in worst.items()},
            "rows_over_tolerance": int(over.sum()),
            "predictions_differ": int((rows["cpu"]["prediction"] != rows["device"]["prediction"]).sum())}


# --- part 3: timings ---------------------------------------------------------------------------


def measure(fn: Callable[[], Any], device: str, repeats: int, warmup: bool = True) -> tuple[float, int, Any]:
    """One warm-up call (unless `warmup` is False), then the best wall time of `repeats` calls, the
    peak memory growth over those calls (bytes) and the last result."""
    if warmup:
        fn()
    held: list[tuple[float, Any]] = []
    peak = peak_memory(lambda: held.append(best_of(fn, repeats)), device)
    return held[0][0], peak, held[0][1]


class MapLookup:
    """An explainer for the per-image facade: returns the fixed maps of the images it is told."""

    def __init__(self, maps: Tensor) -> None:
        self.maps, self.index = maps, 0

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return self.maps[self.index : self.index + inputs.shape[0]]


def forward_cost(model: nn.Module, x: Tensor, t: Tensor, total: int, max_batch: int) -> None:
    """`total` images (the inputs over and over) through `class_scores` in chunks of `max_batch`."""
    idx = torch.arange(total, device=x.device) % x.shape[0]
    for start in range(0, total, max_batch):
        part = idx[start : start + max_batch]
        class_scores(model, x[part], t[part], max_batch=max_batch)


class Timings:
    """Collects timing rows. An item that raises is recorded with its error and the run goes on;
    the error of a reference implementation (``reference=True``) is a note, not a failure."""

    def __init__(self, device: str, sizes: Sizes) -> None:
        self.device, self.sizes, self.rows, self.failures = device, sizes, [], []
        self.kind = torch.device(device).type  # "cuda" or "cpu": where peak memory is read

    def item(self, section: str, item: str, implementation: str, images: int, fn: Callable[[], Any],
             per_image_of: float | None = None, note: str = "", reference: bool = False) -> Any:
        """Time `fn` over `images` images; the row's ``x_ours`` is its time per image over
        `per_image_of` (xaibench's time per image of the same item). A reference is timed once,
        without a warm-up call."""
        try:
            repeats = 1 if reference else self.sizes.repeats
            seconds, peak, out = measure(fn, self.kind, repeats, warmup=self.sizes.warmup and not reference)
        except Exception as err:
            self.error(section, item, implementation, images, err, reference)
            return None
        per_image = seconds / images
        self.rows.append({"section": section, "item": item, "implementation": implementation, "images": images,
                          "seconds": seconds, "images_per_s": images / seconds, "ms_per_image": 1e3 * per_image,
                          "x_ours": per_image / per_image_of if per_image_of else
                          (1.0 if implementation == "xaibench" else None),
                          "peak_mib": peak / 2**20, "note": note})
        return out

    def error(self, section: str, item: str, implementation: str, images: int, err: Exception,
              reference: bool) -> None:
        what = "does not run" if reference else "failed"
        self.rows.append({"section": section, "item": item, "implementation": implementation, "images": images,
                          "note": f"{what}: {type(err).__name__}: {str(err)[:160]}"})
        if not reference:  # ours: recorded, and the exit status says so
            self.failures.append({"item": f"{section}/{item}/{implementation}", "error": repr(err),
                                  "traceback": traceback.format_exc()[-2000:]})

    def ours_per_image(self, section: str, item: str, implementation: str = "xaibench") -> float | None:
        for row in self.rows:
            if (row["section"], row["item"], row["implementation"]) == (section, item, implementation) \
                    and "seconds" in row:
                return row["seconds"] / row["images"]
        return None


def order_metrics(tm: Timings, model: nn.Module, x: Tensor, maps: Tensor, t: Tensor) -> None:
    """Deletion, insertion and ROAD: batched, pure forwards, per-image loops, Quantus, bfloat16."""
    from xaibench.metrics import deletion, insertion, road

    s = tm.sizes
    n, loop = x.shape[0], min(s.loop_n, x.shape[0])
    kw = {"steps": s.steps, "baseline": "black", "max_batch": s.max_batch}
    calls: dict[str, Callable[..., Any]] = {
        "deletion": lambda m, **extra: deletion(m, x, maps, t, **kw, **extra),
        "insertion": lambda m, **extra: insertion(m, x, maps, t, **kw, **extra),
        "road": lambda m, **extra: road(m, x, maps, t, percentages=s.road_percentages, noise=0.0, lerf=False,
                                        max_batch=s.max_batch, **extra),
    }
    for name, call in calls.items():
        counting = Counting(model)
        try:
            call(counting)
        except Exception as err:
            tm.error("metrics", name, "xaibench", n, err, reference=False)
            continue
        forwards = counting.images
        full = tm.item("metrics", name, "xaibench", n, lambda: call(model),
                       note=f"{forwards / n:.0f} forwards / image, max_batch {s.max_batch}")
        ours = tm.ours_per_image("metrics", name)
        tm.item("metrics", name, "pure forward cost", n, lambda: forward_cost(model, x, t, forwards, s.max_batch),
                ours, note=f"the same {forwards} images through class_scores")
        if name != "road":
            lookup = MapLookup(maps)
            facade = ExplanationMetrics(model, lookup, use_cuda=tm.kind == "cuda", max_batch=s.max_batch)

            def per_image(fn: Callable[..., dict[str, Any]] = getattr(facade, name)) -> list[float]:
                aucs = []
                for i in range(loop):
                    lookup.index = i
                    aucs.append(fn(x[i], target_class=int(t[i]), steps=s.steps, baseline="black")["auc"])
                return aucs

            aucs = tm.item("metrics", name, "per-image loop: compat.ExplanationMetrics", loop, per_image, ours,
                           reference=True)
            if aucs is not None and full is not None:
                diff = (torch.tensor(aucs, dtype=torch.float64) - full.scores[:loop].double().cpu()).abs().max()
                tm.rows[-1].update(agreement=float(diff),
                                   note=f"autotimm's calls, one image each; max |auc - ours| {float(diff):.1e}")
            mixed = tm.item("metrics", name, "xaibench, autocast bfloat16", n, lambda: call(model, autocast="bfloat16"),
                            ours)
            if mixed is not None and full is not None:
                rel = ((mixed.scores - full.scores).abs() / full.scores.abs()).max()
                tm.rows[-1].update(agreement=float(rel),
                                   note=f"max relative score difference to float32 {float(rel):.1e}")
        per_row = forwards // n
        tm.item("metrics", name, "one forward per perturbed image (batch 1)", loop,
                lambda: forward_cost(model, x[:loop], t[:loop], per_row * loop, 1), ours, reference=True,
                note=f"{per_row} forwards / image, imputation not included" if name == "road" else
                f"{per_row} forwards / image")
    tm.item("metrics", "road", "Quantus 0.6.0 ROAD (per image)", min(s.quantus_n, n),
            lambda: quantus_road(model, x, maps, t, tm.sizes, tm.device), tm.ours_per_image("metrics", "road"),
            note="MoRF, noise 0, same percentages", reference=True)


def quantus_road(model: nn.Module, x: Tensor, maps: Tensor, t: Tensor, s: Sizes, device: str) -> list[Any]:
    import quantus

    with quiet_quantus():
        q = quantus.ROAD(percentages=list(s.road_percentages), noise=0.0, return_aggregate=False, normalise=False,
                         disable_warnings=True, display_progressbar=False)
        return [q(model=model, x_batch=x[i : i + 1].cpu().numpy(), y_batch=t[i : i + 1].cpu().numpy(),
                  a_batch=maps[i : i + 1, None].cpu().numpy(), device=device) for i in range(min(s.quantus_n, len(x)))]


def chunked(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, batch: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch], t[i : i + batch]) for i in range(0, x.shape[0], batch)])


def explainers(tm: Timings, model: nn.Module, x: Tensor, t: Tensor) -> None:
    """Grad-CAM, IG and SmoothGrad: xaibench against Captum at the same settings and batch."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

    s = tm.sizes
    x, t = x[: s.explain_n], t[: s.explain_n]
    n, b, size = x.shape[0], s.explain_batch, tuple(x.shape[-2:])
    layer = unwrap(model).layer4

    def captum_gradcam(xb: Tensor, tb: Tensor) -> Tensor:
        cam = LayerGradCam(model, layer).attribute(xb, target=tb, relu_attributions=True)
        return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")[:, 0]

    def captum_ig(xb: Tensor, tb: Tensor) -> Tensor:
        return IntegratedGradients(model).attribute(xb, baselines=0.0, target=tb, n_steps=s.ig_steps,
                                                    internal_batch_size=max(b, xb.shape[0])).sum(1)

    def captum_sg(xb: Tensor, tb: Tensor) -> Tensor:
        return NoiseTunnel(Saliency(model)).attribute(xb, nt_type="smoothgrad", nt_samples=s.sg_samples, stdevs=0.15,
                                                      nt_samples_batch_size=max(1, b // xb.shape[0]), target=tb,
                                                      abs=False).sum(1)

    cases = {
        "gradcam": ({"layer": "layer4", "max_batch": b}, captum_gradcam,
                    "layer4; Captum: LayerGradCam + bilinear upsampling"),
        "integrated_gradients": ({"steps": s.ig_steps, "max_batch": b}, captum_ig, f"{s.ig_steps} steps"),
        "smoothgrad": ({"n_samples": s.sg_samples, "max_batch": b}, captum_sg,
                       f"{s.sg_samples} samples (other noise draws: maps not compared)"),
    }
    for name, (params, reference, note) in cases.items():
        ours_fn = xaibench.explainer(name, model, **params)
        ours = tm.item("explainers", name, "xaibench", n, lambda: chunked(ours_fn, x, t, b), note=note)
        ref = tm.item("explainers", name, "Captum", n, lambda: chunked(reference, x, t, b),
                      tm.ours_per_image("explainers", name), note=note, reference=True)
        if name != "smoothgrad" and ours is not None and ref is not None:
            ours, ref = ours.detach(), ref.detach()
            diff = (ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)
            tm.rows[-1].update(agreement=float(diff),
                               note=f"{note}; max |ours - Captum| / max |Captum| {float(diff):.1e}")


def training(tm: Timings, tmp: Path) -> None:
    """A baseline, an FP and an AP epoch with the real trainer (`training_cost.epoch_seconds`)."""
    s = tm.sizes
    n = s.train_n or 1257
    for setting in ("baseline", "fp", "ap"):
        best: list[float] = []

        def epoch(setting: str = setting) -> None:
            best.append(epoch_seconds(setting, str(tmp / f"train-{setting}-{len(best)}"), model=s.train_model,
                                      image_size=s.train_image, n=s.train_n, batch_size=s.train_batch,
                                      epochs=s.train_epochs, device=tm.device))

        try:
            peak = peak_memory(epoch, tm.kind)
        except Exception as err:
            tm.error("training", setting, "xaibench.training.train", n, err, reference=False)
            continue
        base = tm.ours_per_image("training", "baseline", "xaibench.training.train")
        tm.rows.append({"section": "training", "item": setting, "implementation": "xaibench.training.train",
                        "images": n, "seconds": best[0], "images_per_s": n / best[0], "ms_per_image": 1e3 * best[0] / n,
                        "x_ours": best[0] / n / base if base else 1.0, "peak_mib": peak / 2**20,
                        "note": f"{s.train_model}, best of {s.train_epochs} epoch(s); x_ours = x baseline epoch"})


# --- report -----------------------------------------------------------------------------------


def header(device: str, sizes: Sizes, argv: list[str]) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device, "device_name": name,
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "xaibench": xaibench.__version__ if hasattr(xaibench, "__version__") else None,
            "command": " ".join(["python -m benchmarks.gpu", *argv]), "load": os.getloadavg(), "sizes": asdict(sizes)}


def _num(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    h = report["header"]
    lines = [f"{h['date']}, {h['device_name']}, torch {h['torch']}, CUDA {h['cuda']}, cuDNN {h['cudnn']}; "
             f"`{h['command']}`; total {report['seconds']:.0f} s", ""]
    tests, rows = report["device_tests"], report["same_rows"]
    lines.append(f"- device tests (`{tests.get('command', '')}`): {tests.get('summary', tests.get('error'))}")
    if "error" in rows:
        lines.append(f"- same rows on cpu and {h['device']}: failed: {rows['error']}")
    else:
        lines.append(f"- same rows on cpu and {h['device']}: {rows['rows']} rows, max |difference| "
                     f"{rows['max_abs_diff']:.1e}, {rows['rows_over_tolerance']} over the tolerance "
                     f"({rows['tolerance']}), {rows['predictions_differ']} predictions differ")
    lines += ["", "| section | item | implementation | images | s | images/s | x ours | peak MiB | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["timings"]:
        lines.append(f"| {r['section']} | {r['item']} | {r['implementation']} | {r['images']} | "
                     f"{_num(r.get('seconds'), '.3f')} | {_num(r.get('images_per_s'), '.1f')} | "
                     f"{_num(r.get('x_ours'), '.2f')} | {_num(r.get('peak_mib'), '.0f')} | {r.get('note', '')} |")
    return "\n".join(lines)


def collect(device: str, sizes: Sizes, argv: list[str]) -> dict[str, Any]:
    """Parts 1-3 on `device` at `sizes`: the report (see the module doc)."""
    start = time.perf_counter()
    report: dict[str, Any] = {"header": header(device, sizes, argv)}
    report["device_tests"] = device_tests(device, sizes)
    print(f"device tests: {report['device_tests']['summary']} ({report['device_tests']['seconds']:.0f} s)", flush=True)
    tm = Timings(device, sizes)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report["same_rows"] = same_rows(device, sizes, Path(tmp))
        except Exception as err:
            report["same_rows"] = {"error": repr(err), "traceback": traceback.format_exc()[-2000:]}
        print(f"same rows: {report['same_rows']}", flush=True)
        torch.manual_seed(0)
        model = xaibench.load_model(sizes.model, device=device)
        x = torch.rand(sizes.n, 3, sizes.image, sizes.image, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            t = torch.cat([model(x[i : i + sizes.max_batch]).argmax(1) for i in range(0, sizes.n, sizes.max_batch)])
        maps = x.mean(1)
        order_metrics(tm, model, x, maps, t)
        explainers(tm, model, x, t)
        del model, x, maps
        training(tm, Path(tmp))
    report["timings"], report["failures"] = tm.rows, tm.failures
    report["seconds"] = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the same code paths in well under a minute")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        device = str(resolve_device(args.device))
    except InputError as err:
        parser.error(str(err))
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # the allocator statistics and autotimm's facade use the current device
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            # random weights score every class about 1/1000: the warning about normalising by a small
            # score is expected here (the timings do not depend on it)
            warnings.filterwarnings("ignore", message=".*the explained class scores below")
            if device == "cpu":
                torch.set_num_threads(1)  # as the other CPU benchmarks: steadier on a shared machine
            report = collect(device, QUICK if args.quick else FULL, sys.argv[1:] if argv is None else argv)
    finally:
        torch.set_num_threads(threads)
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    rows = report["same_rows"]
    ok = report["device_tests"]["returncode"] == 0 and "error" not in rows and rows["rows_over_tolerance"] == 0 \
        and not report["failures"]
    for failure in report["failures"]:
        print(f"FAILED {failure['item']}: {failure['error']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
