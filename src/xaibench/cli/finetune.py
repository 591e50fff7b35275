"""`xaibench finetune CONFIG --out DIR [--resume] [--device D]`: HARMONY's metric fine-tuning."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a copy of a classifier so that a learnable metric improves for one method (HARMONY)",
        description="Fine-tune the model of a TOML config for a learnable metric (focus, relevance_mass_accuracy, "
        "road, irof, relative_input_stability) and a differentiable method, keeping the original's predictions "
        "(see docs/harmony.md). DIR receives model.pt (the spec file:DIR/model.pt), finetune.toml, log.csv, "
        "evaluation.json (held-out before/after), gallery.pt and gallery.png (original vs fine-tuned maps) and "
        "checkpoints/ for --resume.",
    )
    p.add_argument("config", help="TOML fine-tuning config file")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning in DIR (same config only)")
    p.add_argument("--device", default=None, help="device override: cpu, cuda, cuda:1, auto (not part of the config hash)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from xaibench.plotting import save_gallery
    from xaibench.training.finetune import finetune, load_finetune_config, load_gallery, parse_finetune_config

    cfg = load_finetune_config(args.config)
    if args.device:
        cfg = parse_finetune_config({**cfg.raw, "device": args.device})
    try:
        result = finetune(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        words = ["xaibench", "finetune", args.config, "--out", args.out, "--resume"]
        print(f"xaibench: interrupted; continue the fine-tuning with:\n  {shlex.join(words)}", file=sys.stderr)
        return 130
    shown = load_gallery(args.out)
    if shown is not None:
        save_gallery(shown.images, shown.maps, Path(args.out) / "gallery.png", masks=shown.masks, titles=shown.titles)
    e = result.evaluation
    print(f"model {result.model_path} (step {e['selected_step']}); held-out {e['metric']} with {e['method']}: "
          f"{e['original']['mean']:.4f} -> {e['finetuned']['mean']:.4f} (difference {e['difference']['mean']:+.4f}, "
          f"95% CI [{e['difference']['ci_low']:+.4f}, {e['difference']['ci_high']:+.4f}], Wilcoxon p = {e['wilcoxon_p']:.2g}, "
          f"n = {e['n']}); agreement {e['agreement']:.3f}; accuracy {e['accuracy_original']:.3f} -> "
          f"{e['accuracy_finetuned']:.3f}")
    return 0
