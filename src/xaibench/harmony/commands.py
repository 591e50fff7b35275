"""`xaibench harmony ...`: the HARMONY human study (web application, data sets, labels, analysis).

Needs the `web` extra. Data live in $XAIBENCH_HARMONY_HOME (default ~/.local/share/xaibench/harmony)
unless DATABASE_URL points elsewhere; see docs/harmony.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "harmony",
        help="run the HARMONY human study: load data sets, add annotators, serve, export, analyze",
        description="The HARMONY study: annotators choose between the original and a fine-tuned model's "
        "attribution map (blinded, sides randomised) or 'Neither'. Needs the `web` extra.",
    )
    sub = p.add_subparsers(dest="harmony_command", metavar="ACTION", required=True)

    q = sub.add_parser("load", help="load a study data set (DIR/manifest.json + PNGs); idempotent")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--no-assign", action="store_true", help="do not give the new conditions to existing annotators")
    q.set_defaults(func=handle_load)

    q = sub.add_parser("add-annotator", help="create an annotator account (gets all conditions)")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin (default: generate one and print it once)")
    q.add_argument("--staff", action="store_true", help="a study coordinator: admin access, no conditions")
    q.set_defaults(func=handle_add_annotator)

    q = sub.add_parser("serve", help="serve the web application (gunicorn with threads when installed)")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--workers", type=int, default=1, help="gunicorn worker processes (default 1)")
    q.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    q.set_defaults(func=handle_serve)

    q = sub.add_parser("export", help="write all labels as CSV")
    q.add_argument("-o", "--output", metavar="FILE", help="output file (default: stdout)")
    q.set_defaults(func=handle_export)

    q = sub.add_parser("analyze", help="per-condition, per-metric and per-annotator statistics of the labels")
    q.add_argument("--json", action="store_true", help="print JSON instead of tables")
    q.add_argument("--labels", metavar="CSV", help="analyse an exported CSV instead of the database")
    q.add_argument("--confidence", type=float, default=0.95, help="confidence level of the Wilson intervals")
    q.add_argument("--metrics", metavar="LIST",
                   help="comma-separated metric registry names: agreement of each (and of every condition's own "
                        "metric) with the annotators' majority, scored from the maps the study stores as arrays")
    q.add_argument("--device", default="auto", help="where metrics that need the model run (default: a GPU if any)")
    q.add_argument("--html", metavar="FILE", help="also write the analysis as a self-contained HTML page")
    q.set_defaults(func=handle_analyze)

    q = sub.add_parser("load-masks", help="load a mask-task data set (DIR/manifest.json + PNGs); idempotent")
    q.add_argument("dir", metavar="DIR")
    q.set_defaults(func=handle_load_masks)

    q = sub.add_parser("export-masks", help="write the drawn masks and boxes in xaibench's folder layout")
    q.add_argument("out", metavar="OUT")
    q.add_argument("--split", default="val", help="split folder name (default val)")
    q.add_argument("--annotator", metavar="NAME", help="one annotator's masks (default: the pixel majority of all)")
    q.set_defaults(func=handle_export_masks)

    q = sub.add_parser("import-legacy", help="import the published study's database (app label relevavance)")
    q.add_argument("path", metavar="SQLITE")
    q.add_argument("--skip-invalid", action="store_true",
                   help="import the valid rows and count the others (default: stop and report them)")
    q.set_defaults(func=handle_import_legacy)

    q = sub.add_parser("make-sample", help="write a small synthetic study data set to try the application")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--conditions", type=int, default=2)
    q.add_argument("--examples", type=int, default=5)
    q.set_defaults(func=handle_make_sample)

    q = sub.add_parser("make-study", help="write a study data set from fine-tuned and original models (TOML config)")
    q.add_argument("config", metavar="CONFIG", help="TOML: data, examples, [[conditions]] original / finetuned / metric / method")
    q.add_argument("--out", required=True, metavar="DIR", help="the study folder to create (must not exist)")
    q.set_defaults(func=handle_make_study)

    from xaibench.harmony import crowd_commands

    crowd_commands.register(sub)

    q = sub.add_parser("manage", help="run a Django management command (e.g. `manage check --deploy`)")
    q.add_argument("args", nargs=argparse.REMAINDER)
    q.set_defaults(func=handle_manage)

    for q in sub.choices.values():
        q.set_defaults(func=_database_errors(q.get_default("func")))


def _database_errors(handle):
    """``handle`` with a database that cannot be reached or used (server down, missing role or
    database, unreadable file) reported in one line that names it, instead of a driver traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return handle(args)
        except Exception as err:
            from django.db import utils

            if not isinstance(err, (utils.OperationalError, utils.InterfaceError)):
                raise
            from xaibench.errors import InputError
            from xaibench.harmony import database_name

            cause = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise InputError(f"cannot use the {database_name()} ({cause}); check DATABASE_URL "
                             "(or XAIBENCH_HARMONY_HOME) and that the server is running") from None

    return guarded


def _ready() -> None:
    from xaibench.harmony import ensure_database

    ensure_database()


def handle_load(args: argparse.Namespace) -> int:
    from xaibench.harmony.dataset import load_dataset, read_manifest

    manifest = read_manifest(args.dir)  # validate before touching the database
    _ready()
    counts = load_dataset(args.dir, assign=not args.no_assign)
    print(
        f"loaded {args.dir}: {counts['conditions_created']} new condition(s), {counts['examples_created']} new, "
        f"{counts['examples_updated']} updated, {counts['examples_unchanged']} unchanged example(s)"
    )
    if manifest.crowd is not None:
        print(f"crowdsourced study {manifest.name!r}: {len(manifest.crowd.practice)} practice item(s), "
              f"{len(manifest.crowd.catch_trials) or 'generated'} attention check(s); "
              f"its link: xaibench harmony link {manifest.name} --base-url https://YOUR.HOST")
    return 0


def handle_add_annotator(args: argparse.Namespace) -> int:
    import secrets

    from xaibench.errors import InputError

    from xaibench.harmony.legacy import LEGACY_PREFIX

    name = args.name.strip()
    if not name or len(name) > 150:
        raise InputError("annotator name must be 1-150 characters")
    if name.startswith(LEGACY_PREFIX):
        raise InputError(f"annotator names starting with {LEGACY_PREFIX!r} are reserved for imported legacy annotators")
    generated = not args.password_stdin
    password = secrets.token_urlsafe(12) if generated else sys.stdin.readline(4096).rstrip("\r\n")
    _ready()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError
    from django.db import transaction

    from xaibench.harmony.dataset import assign_conditions
    from xaibench.harmony.models import Condition

    User = get_user_model()
    if User.objects.filter(username=name).exists():
        raise InputError(f"annotator {name!r} already exists")
    try:
        validate_password(password, user=User(username=name))
    except ValidationError as err:
        raise InputError(f"password refused for {name!r}: {' '.join(err.messages)}") from err
    with transaction.atomic():
        user = User.objects.create_user(username=name, password=password)
        if args.staff:
            user.is_staff = user.is_superuser = True
            user.save()
            n = 0
        else:
            n = assign_conditions(user, list(Condition.objects.filter(legacy=False)))
    role = "staff account" if args.staff else f"annotator with {n} condition(s)"
    print(f"created {role}: {name}")
    if generated:
        print(f"password (shown only once): {password}")
    return 0


def handle_serve(args: argparse.Namespace) -> int:
    from xaibench.harmony.server import serve

    _ready()
    return serve(args.host, args.port, workers=args.workers, threads=args.threads)


def handle_export(args: argparse.Namespace) -> int:
    _ready()
    from xaibench.harmony.export import write_csv

    if args.output:
        n = write_csv(args.output)
        print(f"{n} labels written to {args.output}", file=sys.stderr)
    else:
        write_csv(sys.stdout)
    return 0


def handle_analyze(args: argparse.Namespace) -> int:
    from xaibench.errors import InputError
    from xaibench.harmony.analysis import analyze, format_report, to_jsonable

    if not 0 < args.confidence < 1:
        raise InputError("--confidence must be between 0 and 1")
    if args.labels:
        import pandas as pd

        try:
            df = pd.read_csv(args.labels, dtype={"example": str})
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read {args.labels}: {err}") from err
        tidy = df if "trial_kind" in df.columns else None  # a crowdsourced study's table (export-study)
        if tidy is not None:
            from xaibench.harmony.crowd_analysis import labels_of

            df = labels_of(tidy)
    else:
        _ready()
        from xaibench.harmony.export import labels_frame

        df = labels_frame()
    from xaibench.harmony.analysis import normalise

    try:
        normalise(df)
    except ValueError as err:
        raise InputError(f"labels: {err}") from err
    result = analyze(df, confidence=args.confidence)
    if not args.labels:
        from xaibench.harmony.masks import mask_agreement

        masks = mask_agreement()
        if masks["annotations"]:
            result["mask_agreement"] = masks
    if args.metrics is not None:
        _add_agreement(result, df, args)
    if args.labels and tidy is not None:
        from xaibench.harmony.crowd_analysis import analyze_study

        result["studies"] = {args.labels: analyze_study(tidy, confidence=args.confidence)}
    elif not args.labels:
        from xaibench.harmony.crowd_analysis import analyze_study, study_frame
        from xaibench.harmony.models import Study

        result["studies"] = {s.name: analyze_study(study_frame(s), confidence=args.confidence)
                             for s in Study.objects.filter(participants__isnull=False).distinct()}
    if args.json:
        print(json.dumps(to_jsonable(result), indent=2))
    else:
        print(format_report(result))
        from xaibench.harmony.crowd_analysis import format_study

        for name, study in result.get("studies", {}).items():
            print(f"\nCrowdsourced study {name}\n{format_study(study)}")
        from xaibench.harmony.agreement import format_agreement

        print("\n".join(["", *result.get("notes", [])]))
        if result.get("agreement"):
            print(format_agreement(result["agreement"]))
        if result.get("mask_agreement"):
            m = result["mask_agreement"]
            print(f"\nMasks: {m['annotations']} annotation(s) of {m['images']} image(s); {m['images_2plus']} image(s) "
                  f"drawn by two or more annotators: mean pairwise IoU of the masks {m['mean_mask_iou']:.3f}, "
                  f"of the boxes {m['mean_box_iou']:.3f}")
    if args.html:
        from xaibench.files import write_text
        from xaibench.harmony.analysis import format_html

        write_text(args.html, format_html(result))
        print(f"HTML written to {args.html}", file=sys.stderr)
    return 0


def _add_agreement(result: dict, labels, args: argparse.Namespace) -> None:
    """Metric-human agreement into ``result`` (``agreement``, or a ``notes`` line saying why not)."""
    from xaibench.errors import InputError
    from xaibench.harmony.agreement import agreement, scorable_metric, study_scores

    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    if not names:
        raise InputError("--metrics: name at least one metric, e.g. --metrics relevance_mass_accuracy,pointing_game")
    names = [scorable_metric(n).info.name for n in names]
    _ready()
    scores, info = study_scores(names, device=args.device)
    notes = result.setdefault("notes", [])
    for name, why in info["not_scorable"].items():
        notes.append(f"a condition's own metric is not scored: {why.split(';')[0]}")
    for condition in info["without_models"]:
        notes.append(f"{condition}: the study names no models (original_model / finetuned_model), so metrics "
                     "that need the model are undefined there")
    if not info["with_maps"]:
        notes.append(
            f"Metric-human agreement: none of the {info['examples']} examples carries the two maps as arrays "
            "(original_map / finetuned_map), so no metric can be scored (the published study's database holds "
            "only picture paths; studies made by `xaibench harmony make-study` store the arrays)"
        )
        return
    if info["with_maps"] < info["examples"]:
        notes.append(f"{info['examples'] - info['with_maps']} of {info['examples']} examples carry no maps as arrays and are not scored")
    result["agreement"] = agreement(labels, scores, confidence=args.confidence)


def handle_load_masks(args: argparse.Namespace) -> int:
    from xaibench.harmony.masks import load_masks, read_mask_manifest

    read_mask_manifest(args.dir)  # validate before touching the database
    _ready()
    c = load_masks(args.dir)
    print(f"loaded {args.dir}: {c['created']} new, {c['updated']} updated, {c['unchanged']} unchanged image(s)")
    return 0


def handle_export_masks(args: argparse.Namespace) -> int:
    from xaibench.harmony.masks import export_masks

    _ready()
    c = export_masks(args.out, split=args.split, annotator=args.annotator)
    who = f"annotator {args.annotator}" if args.annotator else "pixel majority of the annotators"
    print(f"{c['images']} image(s) with masks ({who}) and {c['boxes']} box(es) written to {args.out}; "
          f"read them with load_dataset('folder:{args.out}', split='{args.split}')")
    return 0


def handle_import_legacy(args: argparse.Namespace) -> int:
    from xaibench.harmony.legacy import import_legacy, read_legacy

    read_legacy(args.path, skip_invalid=args.skip_invalid)  # validate first
    _ready()
    c = import_legacy(args.path, skip_invalid=args.skip_invalid)
    print(
        f"imported {args.path}: {c['conditions']} conditions, {c['examples']} examples (without pictures), "
        f"{c['labels_read']} labels read, {c['rows_skipped']} invalid row(s) skipped, "
        f"{c['annotators']} new legacy annotator account(s); "
        f"{c['duplicates']} duplicated (annotator, example) label(s) resolved (latest wins); "
        f"{c['labels_created']} labels created, {c['labels_updated']} updated"
    )
    return 0


def handle_make_sample(args: argparse.Namespace) -> int:
    from xaibench.errors import InputError
    from xaibench.harmony.sample import make_sample_dataset

    if args.conditions < 1 or args.examples < 1:
        raise InputError("--conditions and --examples must be at least 1")
    path = make_sample_dataset(args.dir, conditions=args.conditions, examples=args.examples)
    print(f"sample study data set written to {path}; load it with `xaibench harmony load {path}`")
    return 0


def handle_make_study(args: argparse.Namespace) -> int:
    from xaibench.harmony.study import create_harmony_dataset, load_study_config

    path = create_harmony_dataset(out=args.out, **load_study_config(args.config))
    print(f"study data set written to {path}; load it with `xaibench harmony load {path}`")
    return 0


def handle_manage(args: argparse.Namespace) -> int:
    from xaibench.harmony import setup

    setup()
    from django.core.management import execute_from_command_line

    rest = [a for a in args.args if a != "--"] if args.args[:1] == ["--"] else args.args
    execute_from_command_line(["xaibench harmony manage", *rest])
    return 0
