"""`xaibench methods`: the registered explanation methods with their cost and parameters."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "methods",
        help="list the explanation methods, their cost and parameters",
        description="List every registered explanation method: output resolution, cost per image "
        "(forwards/backwards as a formula of its parameters) and parameters with defaults.",
    )
    p.add_argument("name", nargs="?", help="show one method only")
    p.set_defaults(func=handle)


ARCHITECTURE_TEXT = {"any": "any", "cnn": "convolutional only", "vit": "timm vision transformers only"}


def format_methods(names: list[str] | None = None) -> str:
    """A readable table: one block per method (aliases, resolution, cost, parameters)."""
    from xaibench.explainers import METHODS
    from xaibench.report.summary import is_control

    infos = {}
    for _, info in METHODS.items():
        infos.setdefault(info.name, info)
    if names:
        infos = {METHODS.get(n).name: METHODS.get(n) for n in names}
    width = max(len(n) for n in infos)
    lines = []
    for name, info in sorted(infos.items()):
        alias = f" (alias: {', '.join(info.aliases)})" if info.aliases else ""
        control = " [control: a model-independent baseline, never ranked best in reports]" if is_control(name) else ""
        lines.append(f"{name:<{width}}  {info.description}{alias}{control}")
        lines.append(f"{'':<{width}}  resolution: {info.resolution}   cost per image: {info.cost}   "
                     f"networks: {ARCHITECTURE_TEXT[info.architectures]}")
        for pname, (default, doc) in info.params.items():
            lines.append(f"{'':<{width}}    {pname}={default!r}  {doc}")
        lines.append("")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    print(format_methods([args.name] if args.name else None), end="")
    return 0
