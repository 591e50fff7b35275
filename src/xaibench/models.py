"""Models: torchvision, timm, saved files and the built-in digits CNNs, all in one convention.

Every model returned by `load_model`:

- takes images in [0, 1] pixel space, float [B, 3, H, W] (the explainers' convention); models
  trained on normalised inputs (torchvision, timm) get their normalisation prepended inside the
  model (`Normalized`: ImageNet mean/std, or timm's ``pretrained_cfg`` mean/std);
- returns logits [B, num_classes] (dict / tuple outputs are unwrapped, see `to_logits`);
- is in eval mode, on `device` (default: cuda if available, else cpu).

Specs: ``torchvision:<name>``, ``timm:<name>``, ``file:<path>`` (written by `save_model`),
``builtin:digits-cnn`` and ``builtin:digits-spurious-cnn`` (trained on first use, then cached).
See docs/models-data.md.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Offline by default: a missing Hugging Face download fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from xaibench.config import suggest  # noqa: E402
from xaibench.devices import model_device  # noqa: E402
from xaibench.errors import InputError, UnknownNameError, WeightsUnavailableError  # noqa: E402
from xaibench.files import write_atomic  # noqa: E402
from xaibench.modelspec import ModelSpec  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_NAMES = ("pretrained", "default", "imagenet")  # weights= values meaning "the usual pretrained ones"


# --- wrappers ---------------------------------------------------------------------------------


def to_logits(out: Any) -> Tensor:
    """The logits tensor of a model output: a tensor itself, ``out.logits`` / ``out["logits"]``
    (Hugging Face style), the first tensor of a tuple/list (e.g. inception's (logits, aux))."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("logits", "out", "output"):
            if isinstance(out.get(key), Tensor):
                return out[key]
        tensors = [v for v in out.values() if isinstance(v, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise InputError(f"cannot find the logits in a model output with keys {list(out)}")
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise InputError(f"cannot find the logits in a model output of type {type(out).__name__}")


class Logits(nn.Module):
    """``net`` whose output (dict / tuple / HF output object) is reduced to the logits tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return to_logits(self.net(x))


class Normalized(nn.Module):
    """``net((x - mean) / std)`` for images `x` in [0, 1]; the output is reduced to logits.

    mean/std are per-channel buffers (part of the state dict, so they enter `model_hash`).
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return to_logits(self.net((x - self.mean) / self.std))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside the `Normalized` / `Logits` wrappers (the model itself when unwrapped)."""
    while isinstance(model, (Normalized, Logits)):
        model = model.net
    return model


def as_classifier(net: nn.Module, *, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                  input_shape: tuple[int, ...] = (3, 224, 224)) -> nn.Module:
    """`net` in the xaibench convention: normalised inside when `mean`/`std` are given (`Normalized`,
    which also unwraps outputs); otherwise wrapped in `Logits` only if a probe forward of zeros of
    `input_shape` returns something other than a tensor. Plain tensor-returning models come back as is."""
    if mean is not None or std is not None:
        return Normalized(net, mean or (0.0, 0.0, 0.0), std or (1.0, 1.0, 1.0))
    device = model_device(net)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *input_shape, device=device))
    finally:
        net.train(was_training)
    return net if isinstance(out, Tensor) else Logits(net)


# --- the built-in digits CNN --------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """3x32x32 images in [0, 1] -> 10 logits: three 3x3 conv + batch-norm + ReLU layers (16, 32, 64
    channels; max-pool after the first two), global average pooling and a linear layer.
    ``features`` ends at the last conv layer's ReLU (64 maps of 8x8), the default Grad-CAM layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


# name -> what it is. The built-in models are trained by the one trainer of the code base
# (`xaibench.training`), which sits above this layer and is not imported here: `load_model` asks the
# provider named by BUILTIN_PROVIDER ("module:function", resolved on use, like a plugin entry point)
# for the path of the trained model file (a `save_model` file, cached; see xaibench.training.builtin).
BUILTIN_MODELS: dict[str, str] = {
    "digits-cnn": "DigitsCNN trained on builtin:digits",
    "digits-spurious-cnn": "DigitsCNN trained on builtin:digits-spurious (learns the coloured square)",
}
BUILTIN_PROVIDER = "xaibench.training.builtin:trained_model_file"


def cache_dir() -> Path:
    """Where trained built-in models are cached: ``$XAIBENCH_CACHE_DIR`` or ``~/.cache/xaibench``."""
    env = os.environ.get("XAIBENCH_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xaibench"


def _builtin(name: str) -> nn.Module:
    """The trained built-in model `name`: the file its provider returns (trained on first use)."""
    module, _, function = BUILTIN_PROVIDER.partition(":")
    provider: Callable[[str], Path] = getattr(importlib.import_module(module), function)
    return _load_file(Path(provider(name)))


# --- building architectures ---------------------------------------------------------------------


def _suggest(name: str, known: list[str], what: str) -> UnknownNameError:
    return UnknownNameError(f"unknown {what} {name!r}.{suggest(name, known, n=5)}")


def _torchvision_net(name: str, num_classes: int | None, pretrained: bool = False) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise _suggest(name, known, "torchvision model")
    kwargs: dict[str, Any] = {"num_classes": num_classes} if num_classes is not None else {}
    if name in ("inception_v3", "googlenet"):
        # As torchvision's builders do for their pretrained weights: those expect the input
        # re-normalised inside the model (transform_input) and carry the auxiliary heads.
        kwargs.update(init_weights=not pretrained, **({"transform_input": True, "aux_logits": True} if pretrained else {}))
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise InputError("timm: specs need the timm package (pip install 'xaibench[timm]')") from err
    return timm


def _timm_check(name: str) -> Any:
    timm = _import_timm()
    if not timm.is_model(name.split(".")[0]):
        raise _suggest(name, timm.list_models(), "timm model")
    return timm


def _timm_mean_std(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std


def architecture(spec: str, num_classes: int | None = None, *, seed: int = 0) -> nn.Module:
    """The model of architecture `spec` (``torchvision:``, ``timm:``, ``builtin:``; the built-in
    models' untrained network) with random weights drawn under `seed` (the same weights in every
    process; the global RNG state is left as it was), wrapped in the xaibench convention, on the CPU."""
    return _arch(spec, num_classes, seed)


def _arch(spec: str, num_classes: int | None, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _random_arch(spec, num_classes)


def _random_arch(spec: str, num_classes: int | None) -> nn.Module:
    parsed = ModelSpec.architecture(spec)
    if parsed is None:
        raise InputError(f"{spec!r} is not an architecture spec (torchvision:<name>, timm:<name>, builtin:<name>)")
    scheme, name = parsed.kind, parsed.name
    if scheme == "torchvision":
        return Normalized(_torchvision_net(name, num_classes))
    if scheme == "timm":
        timm = _timm_check(name)
        kwargs = {"num_classes": num_classes} if num_classes is not None else {}
        net = timm.create_model(name, pretrained=False, **kwargs)
        return Normalized(net, *_timm_mean_std(net))
    _builtin_name(name)  # the remaining architecture kind: builtin
    if num_classes not in (None, 10):
        raise InputError(f"{spec} has 10 classes, got num_classes={num_classes}")
    return DigitsCNN(10)


def _builtin_name(name: str) -> str:
    if name not in BUILTIN_MODELS:
        raise _suggest(name, list(BUILTIN_MODELS), "built-in model")
    return name


# --- weights ----------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from a ``.pt``/``.pth``/``.bin`` (torch.load, weights_only) or ``.safetensors`` file."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"cannot read weights file {path}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return dict(obj)


def _load_state(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load `state` into `model` (the wrapped model or the network inside; ``module.`` prefixes dropped)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    targets = [model] + ([unwrap(model)] if unwrap(model) is not model else [])
    errors = []
    for target in targets:
        keys = set(target.state_dict())
        if set(state) <= keys and keys - set(state) <= {"mean", "std"}:
            try:
                target.load_state_dict(state, strict=False)
                return
            except RuntimeError as err:
                errors.append(str(err).splitlines()[0] + " " + " ".join(str(err).split("\n")[1:3]))
    net_keys = set(unwrap(model).state_dict())
    missing = sorted(net_keys - set(state))[:5]
    unexpected = sorted(set(state) - net_keys)[:5]
    detail = errors[0] if errors else f"missing keys {missing}, unexpected keys {unexpected}"
    raise InputError(f"weights from {source} do not fit the architecture: {detail}")


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_pretrained(name: str, weights: str, num_classes: int | None) -> nn.Module:
    import torchvision

    net = _torchvision_net(name, None, pretrained=True)  # validates the name first
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as err:
        raise WeightsUnavailableError(f"torchvision:{name} has no pretrained weights") from err
    key = "DEFAULT" if weights.lower() in PRETRAINED_NAMES else weights
    try:
        w = enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError as err:
        raise _suggest(weights, ["pretrained", "DEFAULT", *enum.__members__], f"weights of torchvision:{name}") from err
    classes = len(w.meta.get("categories") or []) or None
    if num_classes is not None and classes is not None and num_classes != classes:
        raise InputError(
            f"torchvision:{name} weights {w.name} have {classes} classes, not num_classes={num_classes}; "
            "pass weights=<path to a state dict> of a fine-tuned model instead"
        )
    if classes is not None and classes != 1000:
        net = _torchvision_net(name, classes, pretrained=True)
    filename = w.url.rsplit("/", 1)[-1]
    path = _hub_checkpoints() / filename
    if not path.is_file():
        raise WeightsUnavailableError(
            f"pretrained weights of torchvision:{name} ({w.name}) are not in the local cache and are not "
            f"downloaded: put {filename} (from {w.url}) in {path.parent} (the torch hub dir; set TORCH_HOME "
            "to move it), or pass weights=<path to a state dict file>"
        )
    _load_state(net, _read_state_dict(path), str(path))
    transforms = w.transforms()
    mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transforms, "std", IMAGENET_STD))
    return Normalized(net, mean, std)


def _timm_pretrained(name: str, num_classes: int | None) -> nn.Module:
    timm = _timm_check(name)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None:
        try:
            net = timm.create_model(name, pretrained=False)
            cfg = net.pretrained_cfg
        except Exception as err:
            raise WeightsUnavailableError(f"timm:{name} has no pretrained weights") from err
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    found: Path | None = None
    where: list[str] = []
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo_dir = _hf_cache_dir() / ("models--" + hub_id.replace("/", "--")) / "snapshots"
        where.append(f"the Hugging Face cache ({repo_dir.parent}, repo {hub_id}; set HF_HOME or HF_HUB_CACHE)")
        if repo_dir.is_dir():
            for snap in sorted(repo_dir.iterdir()):
                for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                    if (snap / fname).is_file():
                        found = snap / fname
                        break
                if found:
                    break
    url = cfg.get("url")
    if found is None and url:
        candidate = _hub_checkpoints() / url.rsplit("/", 1)[-1]
        where.append(f"{candidate} (the torch hub dir; from {url})")
        if candidate.is_file():
            found = candidate
    if found is None:
        places = " or ".join(where) or "the local caches"
        raise WeightsUnavailableError(
            f"pretrained weights of timm:{name} are not in the local cache and are not downloaded: put them in "
            f"{places}, or pass weights=<path to a state dict file>"
        )
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    try:
        net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(found)}, **kwargs)
    except Exception as err:
        raise WeightsUnavailableError(f"cannot load the pretrained weights of timm:{name} from {found}: {err}") from err
    return Normalized(net, *_timm_mean_std(net))


# --- files ------------------------------------------------------------------------------------


def save_model(model: nn.Module, path: str | os.PathLike, spec: str, num_classes: int | None = None) -> Path:
    """Write `model` to `path` as ``{"spec", "num_classes", "state_dict"}``, loadable with
    ``load_model("file:<path>")`` (tensors only, read back with ``weights_only=True``).

    spec: the architecture, e.g. ``"torchvision:resnet18"``, ``"timm:vit_tiny_patch16_224"``,
        ``"builtin:digits-cnn"``. The state dict saved is that of the network inside the wrappers.
    num_classes: defaults to the last linear layer's output size (or ``net.num_classes``).
    """
    if ModelSpec.architecture(spec) is None:
        raise InputError(f"save_model: spec must be torchvision:<name>, timm:<name> or builtin:<name>, got {spec!r}")
    net = unwrap(model)
    if num_classes is None:
        num_classes = getattr(net, "num_classes", None)
        if not isinstance(num_classes, int):
            linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise InputError("save_model: cannot tell the number of classes; pass num_classes=")
            num_classes = linears[-1].out_features
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    out = Path(path)
    write_atomic(out, lambda p: torch.save({"spec": spec, "num_classes": int(num_classes), "state_dict": state}, p))
    return out


def _load_file(path: Path) -> nn.Module:
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"cannot read model file {path} (expected a file written by save_model): {err}") from err
    if not isinstance(obj, Mapping) or not {"spec", "state_dict"} <= set(obj):
        raise InputError(f"model file {path} is not a save_model file (needs keys 'spec', 'num_classes', 'state_dict')")
    spec = obj["spec"]
    if ModelSpec.architecture(spec) is None:
        raise InputError(f"model file {path}: bad architecture spec {spec!r}")
    model = _arch(spec, obj.get("num_classes"))
    _load_state(model, obj["state_dict"], str(path))
    return model


# --- public API -----------------------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: str | ModelSpec, num_classes: int | None = None, weights: str | None = None,
               device: str | torch.device | None = None, seed: int = 0) -> nn.Module:
    """The classifier named by `spec`, in eval mode on `device`, taking images in [0, 1].

    spec:
        ``torchvision:<name>`` / ``timm:<name>``: the architecture (normalisation inside the model);
        ``file:<path>``: a file written by `save_model`;
        ``builtin:digits-cnn`` / ``builtin:digits-spurious-cnn``: small CNNs for 3x32x32 digits,
        trained on ``builtin:digits`` / ``builtin:digits-spurious`` on first use and cached.
    num_classes: size of the classifier head (torchvision/timm; default: the architecture's 1000).
    weights: None = random init for torchvision/timm, the cached trained weights for builtin;
        ``"pretrained"`` (or a torchvision weights name such as ``"DEFAULT"``/``"IMAGENET1K_V1"``)
        = pretrained weights from the local torch hub / Hugging Face cache only (never downloaded;
        `WeightsUnavailableError` says where to put them); a path = a state dict file.
    device: default cuda if available, else cpu.
    seed: seeds the random initialisation of torchvision/timm models without weights (the same
        seed gives the same weights in every process; the runner passes the run seed).
    """
    parsed = ModelSpec.parse(spec)
    spec, scheme, name = str(parsed), parsed.kind, parsed.name
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    is_path = weights is not None and weights.lower() not in PRETRAINED_NAMES and (
        os.sep in weights or Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors") or Path(weights).exists())

    if scheme == "file":
        if weights is not None:
            raise InputError("file: models carry their weights; do not pass weights=")
        model = _load_file(parsed.path)
        if num_classes is not None and _num_classes(model) not in (None, num_classes):
            raise InputError(f"{spec} has {_num_classes(model)} classes, not num_classes={num_classes}")
    elif scheme == "builtin":
        _builtin_name(name)
        if num_classes not in (None, 10):
            raise InputError(f"{spec} has 10 classes, got num_classes={num_classes}")
        if weights is None:
            model = _builtin(name)
        elif is_path:
            model = _arch(spec, None)
            _load_state(model, _read_state_dict(Path(weights).expanduser()), weights)
        else:
            raise InputError(f"{spec}: weights must be None (trained and cached) or a path to a state dict, "
                             f"got {weights!r}")
    elif weights is None:
        model = _arch(spec, num_classes, seed)
    elif is_path:
        model = _arch(spec, num_classes)
        _load_state(model, _read_state_dict(Path(weights).expanduser()), weights)
    elif scheme == "torchvision":
        model = _torchvision_pretrained(name, weights, num_classes)
    elif weights.lower() in PRETRAINED_NAMES:
        model = _timm_pretrained(name, num_classes)
    else:
        raise InputError(f"{spec}: weights must be None, 'pretrained' or a path to a state dict, got {weights!r}")
    return model.to(torch.device(device) if device is not None else default_device()).eval()


def _num_classes(model: nn.Module) -> int | None:
    net = unwrap(model)
    n = getattr(net, "num_classes", None)
    if isinstance(n, int):
        return n
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def model_hash(model: nn.Module) -> str:
    """sha256 hex digest of the state dict: keys sorted, each tensor's name, dtype, shape and bytes
    (on the CPU). Identical weights give identical hashes in any process, on any device."""
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = [
    "BUILTIN_MODELS", "DigitsCNN", "Logits", "Normalized", "architecture", "as_classifier", "cache_dir", "load_model",
    "model_hash", "save_model", "to_logits", "unwrap",
]
