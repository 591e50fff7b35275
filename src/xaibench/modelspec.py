"""Model specs, parsed once: ``torchvision:<name>``, ``timm:<name>``, ``file:<path>``, ``builtin:<name>``.

`ModelSpec.parse` checks a spec and splits it into its kind and name (for ``file:``, the path as
written); ``str()`` gives the spec back as written. The one rule for relative ``file:`` paths: a
relative path in a file (a study config, a study manifest) is relative to that file's folder, and
``parse(text, base=folder)`` anchors it there (absolute and resolved); `relative_to` writes a spec
for a file inside a folder. No torch here, so the HARMONY application may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xaibench.config import suggest
from xaibench.errors import InputError, UnknownNameError

SCHEMES = ("torchvision", "timm", "file", "builtin")
ARCHITECTURES = ("torchvision", "timm", "builtin")  # the kinds that name an architecture


@dataclass(frozen=True)
class ModelSpec:
    """A `load_model` spec: `kind` (one of `SCHEMES`) and `name` (architecture, built-in model or path)."""

    kind: str
    name: str

    @classmethod
    def parse(cls, spec: str | ModelSpec, *, base: str | Path | None = None) -> ModelSpec:
        """The spec `spec` checked and split; a relative ``file:`` path is anchored at `base` when given."""
        if isinstance(spec, ModelSpec):
            parsed = spec
        else:
            if not isinstance(spec, str) or ":" not in spec:
                raise InputError(f"model spec must look like 'torchvision:resnet18', 'timm:<name>', 'file:<path>' or "
                                 f"'builtin:digits-cnn', got {spec!r}")
            scheme, _, name = spec.partition(":")
            if scheme not in SCHEMES:
                hint = suggest(scheme, SCHEMES, n=2, cutoff=0.4, form="{}:")
                raise UnknownNameError(f"unknown model kind {scheme + ':'!r} in {spec!r}.{hint} Known: "
                                       + ", ".join(s + ":" for s in SCHEMES))
            if not name:
                raise InputError(f"model spec {spec!r} names no model")
            parsed = cls(scheme, name)
        if base is not None and parsed.kind == "file" and not parsed.path.is_absolute():
            return cls("file", str((Path(base) / parsed.name).resolve()))
        return parsed

    @classmethod
    def architecture(cls, spec: object) -> ModelSpec | None:
        """`spec` parsed when it names an architecture (torchvision, timm, built-in), else None."""
        try:
            parsed = cls.parse(spec)  # type: ignore[arg-type]
        except (InputError, UnknownNameError):
            return None
        return parsed if parsed.is_architecture else None

    @property
    def path(self) -> Path:
        """The model file of a ``file:`` spec (``~`` expanded)."""
        if self.kind != "file":
            raise InputError(f"{self} is not a file: spec")
        return Path(self.name).expanduser()

    @property
    def is_architecture(self) -> bool:
        """Whether the spec names an architecture (torchvision, timm, built-in), not a model file."""
        return self.kind in ARCHITECTURES

    def relative_to(self, folder: Path) -> ModelSpec:
        """The ``file:`` spec of this spec's file, which lies inside `folder`, relative to it (POSIX)."""
        return ModelSpec("file", self.path.relative_to(folder).as_posix())

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"
