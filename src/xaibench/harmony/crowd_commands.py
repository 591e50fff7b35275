"""`xaibench harmony link / power / export-study`: running a crowdsourced study (docs/harmony.md)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("link", help="print the signed enrolment link of a crowdsourced study")
    q.add_argument("study", metavar="STUDY", help="the study's name (its manifest's name)")
    q.add_argument("--base-url", default="http://127.0.0.1:8000", help="where participants reach the server")
    q.add_argument("--platform", choices=("prolific", "generic"), default="prolific",
                   help="prolific: with Prolific's placeholders; generic: ?pid=")
    q.add_argument("--pid", default="", help="a per-participant link: this identifier is signed into it")
    q.set_defaults(func=handle_link)

    q = sub.add_parser("power", help="decided answers, labels and participants needed to detect a preference")
    q.add_argument("--preference", type=float, required=True,
                   help="expected share of fine-tuned among decided answers (e.g. 0.6)")
    q.add_argument("--neither", type=float, default=0.0, help="expected share of 'Neither' answers (default 0)")
    q.add_argument("--conditions", type=int, default=1, help="conditions tested (default 1)")
    q.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default 0.05)")
    q.add_argument("--power", type=float, default=0.8, help="target power (default 0.8)")
    q.add_argument("--correction", choices=("bonferroni", "holm", "none"), default="bonferroni")
    q.add_argument("--examples-per-participant", type=int, help="main examples each participant labels")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=handle_power)

    q = sub.add_parser("export-study", help="write a crowdsourced study's tidy table (CSV) and codebook")
    q.add_argument("study", metavar="STUDY")
    q.add_argument("--out", required=True, metavar="DIR")
    q.set_defaults(func=handle_export_study)


def handle_link(args: argparse.Namespace) -> int:
    from xaibench.errors import InputError
    from xaibench.harmony import ensure_database

    ensure_database()
    from xaibench.harmony.crowd import PID_RE, join_link
    from xaibench.harmony.models import Study

    study = Study.objects.filter(name=args.study).first()
    if study is None:
        known = ", ".join(Study.objects.values_list("name", flat=True)) or "none loaded"
        raise InputError(f"no crowdsourced study named {args.study!r} (studies: {known}); load a study folder "
                         "whose manifest has a 'crowdsourcing' section")
    if args.pid and not PID_RE.match(args.pid):
        raise InputError("--pid must be 1 to 128 letters, digits or _.:@-")
    print(join_link(study, args.base_url, platform=args.platform, pid=args.pid))
    return 0


def handle_power(args: argparse.Namespace) -> int:
    from xaibench.errors import InputError
    from xaibench.harmony.power import plan

    if args.conditions < 1 or not 0 < args.alpha < 1 or not 0 < args.power < 1:
        raise InputError("--conditions must be at least 1, --alpha and --power between 0 and 1")
    if args.examples_per_participant is not None and args.examples_per_participant < 1:
        raise InputError("--examples-per-participant must be at least 1")
    try:
        result = plan(args.preference, args.neither, args.conditions, args.alpha, args.power, args.correction,
                      args.examples_per_participant)
    except ValueError as err:
        raise InputError(f"--preference / --neither: {err}") from err
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    holm = " (Holm rejects at least what Bonferroni does: this n is enough)" if args.correction == "holm" else ""
    print(f"preference {result['preference']:g} against 0.5, two-sided exact binomial test at "
          f"{result['alpha_per_condition']:.4g} per condition ({args.conditions} condition(s), {args.correction}){holm}")
    print(f"decided answers per condition: {result['decided']} (exact power {result['achieved_power']:.3f})")
    print(f"labels per condition with {100 * result['neither']:.1f}% 'Neither': {result['labels_per_condition']}; "
          f"all conditions: {result['labels_total']}")
    if "participants" in result:
        print(f"participants at {args.examples_per_participant} main examples each: {result['participants']}")
    return 0


def handle_export_study(args: argparse.Namespace) -> int:
    from xaibench.harmony import ensure_database

    ensure_database()
    from xaibench.harmony.crowd_analysis import export_study

    table, codebook = export_study(args.study, args.out)
    print(f"written {table} and {codebook}")
    return 0
