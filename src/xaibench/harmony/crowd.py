"""Crowdsourced studies: signed enrolment links, pseudonymised identifiers, balanced assignment of
examples, attention checks and completion codes (docs/harmony.md, "Running a crowdsourced study").

A study link signs the study (and, when the study names one, the platform's study id; for a
per-participant link also the identifier) with the server's ``SECRET_KEY``; the platform appends
the participant's identifier (Prolific: ``PROLIFIC_PID``, ``STUDY_ID``, ``SESSION_ID``; others
``pid``). Identifiers are stored only as HMAC-SHA256 with the same key (``keyed_hash``): one
identifier is one participant on this server (a database constraint), whatever the tab or reload.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import random
import re
import secrets
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from xaibench.harmony.models import CheckItem, Example, Participant, Study, Trial

SALT = "xaibench.harmony.join"
PARTICIPANT_PREFIX = "crowd."  # user names of participant accounts: the prefix and the pseudonym
PID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


class LinkRefused(Exception):
    """An enrolment link that must be refused: ``status`` (400/403/410) and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class StudyFull(Exception):
    """Every example of the study has its target number of labels."""


def keyed_hash(kind: str, value: str) -> str:
    """HMAC-SHA256 of ``value`` under the server's ``SECRET_KEY`` (hex): a pseudonym that only the
    holder of the key can link back to a given identifier."""
    return hmac.new(settings.SECRET_KEY.encode(), f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()


def join_token(study: Study, pid: str = "") -> str:
    """The signed part of a study's link (its platform study id and, optionally, one identifier)."""
    payload = {"s": study.pk, "p": study.config.get("platform_study_id", "")}
    if pid:
        payload["i"] = pid
    return signing.dumps(payload, salt=SALT, compress=False)


def join_link(study: Study, base_url: str, platform: str = "prolific", pid: str = "") -> str:
    """The link to give the platform: Prolific's placeholders, or ``?pid=`` for others (filled
    with ``pid`` for a per-participant link, whose identifier is also signed)."""
    from django.urls import reverse

    url = base_url.rstrip("/") + reverse("harmony:join", kwargs={"token": join_token(study, pid)})
    if platform == "prolific":
        return url + "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
    return url + "?" + urlencode({"pid": pid or "PARTICIPANT_ID"})


def read_link(token: str, query) -> dict:
    """Check an enrolment link; returns ``study``, ``pid_hash``, ``platform``, ``session_hash``.
    Raises ``LinkRefused`` for an unsigned or altered link, a missing identifier or a closed study."""
    try:
        payload = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise LinkRefused(403, "This link is not valid: its signature does not match. Open the study with "
                               "the exact link the platform gave you.") from None
    study = Study.objects.filter(pk=payload.get("s")).first() if isinstance(payload, dict) else None
    if study is None:
        raise LinkRefused(403, "This link belongs to no study on this server.")
    platform = "prolific" if "PROLIFIC_PID" in query else "generic"
    pid = query.get("PROLIFIC_PID" if platform == "prolific" else "pid", "") or payload.get("i", "")
    if not PID_RE.match(pid):
        raise LinkRefused(400, "This link carries no valid participant identifier (PROLIFIC_PID or pid: "
                               "1 to 128 letters, digits or _.:@-).")
    if payload.get("i") and pid != payload["i"]:
        raise LinkRefused(403, "This link was altered: the participant identifier is not the one it was made for.")
    if platform == "prolific" and payload.get("p") and query.get("STUDY_ID", "") != payload["p"]:
        raise LinkRefused(403, "This link was altered: its STUDY_ID is not this study's.")
    if not study.open:
        raise LinkRefused(403, "This study is closed; it takes no new participants.")
    session = query.get("SESSION_ID", "")[:128]
    return {"study": study, "pid_hash": keyed_hash("pid", pid), "platform": platform,
            "session_hash": keyed_hash("session", session) if session else ""}


def existing_participant(pid_hash: str, study: Study) -> Participant | None:
    """The participant of this identifier, or None; ``LinkRefused`` when it enrolled in another study."""
    participant = Participant.objects.filter(pid_hash=pid_hash).select_related("user").first()
    if participant is not None and participant.study_id != study.pk:
        raise LinkRefused(403, "This participant identifier has already taken part in another study on this "
                               "server; each identifier can take part in one study only.")
    return participant


def enrol(study: Study, pid_hash: str, platform: str, session_hash: str = "") -> Participant:
    """The participant of ``pid_hash``: created with an account and a trial sequence, or the one
    that exists (a second tab, a reload; concurrent calls get the same participant)."""
    from django.contrib.auth import get_user_model

    found = existing_participant(pid_hash, study)
    if found is not None:
        return found
    try:
        with transaction.atomic():
            Study.objects.select_for_update().filter(pk=study.pk).first()  # one enrolment at a time per study
            user = get_user_model()(username=PARTICIPANT_PREFIX + pid_hash[:16])
            user.set_unusable_password()
            user.save()
            code = "" if study.config.get("completion_code") else "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
            participant = Participant.objects.create(user=user, study=study, pid_hash=pid_hash, platform=platform,
                                                     session_hash=session_hash, completion_code=code)
            build_trials(participant)
            return participant
    except IntegrityError:  # enrolled concurrently by another request with the same identifier
        found = existing_participant(pid_hash, study)
        if found is None:
            raise
        return found


def deadline(participant: Participant) -> datetime:
    return participant.enrolled_at + timedelta(hours=float(participant.study.config.get("deadline_hours", 24)))


def _active_main_trials(study: Study):
    """Main trials that hold a place: of completed participants and of those still within their deadline."""
    hours = float(study.config.get("deadline_hours", 24))
    live = Q(participant__completed_at__isnull=False) | Q(participant__enrolled_at__gte=timezone.now() - timedelta(hours=hours))
    return Trial.objects.filter(participant__study=study, kind=Trial.MAIN).filter(live)


def _grey_map(stored: str) -> str:
    """A uniform grey map of the size of the stored map ``stored``, stored uncompressed like the maps."""
    import numpy as np
    from django.core.files.storage import default_storage
    from PIL import Image

    from xaibench.harmony.dataset import store_png

    with default_storage.open(stored, "rb") as fh, Image.open(fh) as im:
        width, height = im.size
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8), "RGB").save(buffer, format="PNG", compress_level=0)
    return store_png(buffer.getvalue())


def build_trials(participant: Participant) -> None:
    """The participant's sequence: the practice items, then ``examples_per_participant`` main
    examples chosen least-filled-first (fewest places held, then the condition this participant has
    least of, then at random; examples at ``labels_per_example`` are skipped) with the fine-tuned map
    on the side it has been shown on less often, and ``catch_rate`` attention checks per main
    example (at least one when the rate is above 0) at random places among them. Call with the
    study row locked."""
    study = participant.study
    config = study.config
    rng = random.SystemRandom()
    examples = list(Example.objects.filter(condition__study=study.name, condition__legacy=False).values_list("id", "condition_id"))
    held = {row["example_id"]: row for row in _active_main_trials(study).values("example_id").annotate(
        n=Count("id"), left=Count("id", filter=Q(finetuned_left=True)))}
    target = config.get("labels_per_example")
    open_examples = [e for e in examples if target is None or held.get(e[0], {"n": 0})["n"] < target]
    if examples and not open_examples:
        raise StudyFull(study.name)
    k = min(int(config.get("examples_per_participant") or len(examples)), len(open_examples))
    taken: dict[int, int] = {}
    order = {e: rng.random() for e in open_examples}
    chosen = []
    for _ in range(k):
        best = min((e for e in open_examples if e not in chosen),
                   key=lambda e: (held.get(e[0], {"n": 0})["n"], taken.get(e[1], 0), order[e]))
        chosen.append(best)
        taken[best[1]] = taken.get(best[1], 0) + 1
    main = []
    for example_id, _ in chosen:
        row = held.get(example_id, {"n": 0, "left": 0})
        left, right = row["left"], row["n"] - row["left"]
        side = left < right if left != right else bool(rng.getrandbits(1))
        main.append(Trial(kind=Trial.MAIN, example_id=example_id, finetuned_left=side))
    rng.shuffle(main)
    rate = float(config.get("catch_rate", 0))
    n_catch = max(1, round(rate * len(main))) if rate > 0 and main else 0
    supplied = list(_items(study, CheckItem.CATCH))
    rng.shuffle(supplied)
    catches, first = [], rng.getrandbits(1)  # generated checks alternate 'same' / 'wrong' from a random start
    for i in range(n_catch):
        if supplied:
            catches.append(_check_trial(Trial.CATCH, supplied[i % len(supplied)], rng))
        else:
            example = Example.objects.get(pk=rng.choice(examples)[0])
            wrong = _grey_map(example.original_map) if (i + first) % 2 else ""
            catches.append(_trial_of(Trial.CATCH, example.image, example.original_map, wrong, rng, example=example))
    sequence = main
    for trial in catches:  # at random places, never first among the main examples
        sequence.insert(rng.randint(1, len(sequence)), trial)
    practice = [_check_trial(Trial.PRACTICE, item, rng) for item in _items(study, CheckItem.PRACTICE)]
    for position, trial in enumerate(practice + sequence, start=1):
        trial.participant = participant
        trial.position = position
    Trial.objects.bulk_create(practice + sequence)


def _items(study: Study, kind: str):
    """The study's practice or attention-check items that its manifest names now, in its order."""
    return study.items.filter(kind=kind, key__in=study.config.get("items", {}).get(kind, [])).order_by("position")


def _trial_of(kind: str, image: str, real: str, wrong: str, rng, example=None, item=None) -> Trial:
    left = bool(rng.getrandbits(1))
    expected = ("left" if left else "right") if wrong else "neither"
    return Trial(kind=kind, example=example, item=item, check_kind="wrong" if wrong else "same", finetuned_left=left,
                 image=image, map=real, wrong=wrong, expected=expected)


def _check_trial(kind: str, item: CheckItem, rng) -> Trial:
    return _trial_of(kind, item.image, item.map, item.wrong, rng, item=item)


def pictures(trial: Trial) -> dict[str, str]:
    """Media paths of the trial's image and its left and right maps."""
    if trial.kind == Trial.MAIN:
        example = trial.example
        ft, orig = example.finetuned_map, example.original_map
        left, right = (ft, orig) if trial.finetuned_left else (orig, ft)
        return {"image": example.image, "left": left, "right": right}
    other = trial.wrong or trial.map
    left, right = (trial.map, other) if trial.finetuned_left else (other, trial.map)
    return {"image": trial.image, "left": left, "right": right}


def prediction(trial: Trial) -> str:
    return trial.item.prediction if trial.item_id else trial.example.prediction


def completion_code(participant: Participant) -> str:
    return participant.completion_code or participant.study.config.get("completion_code", "")


def completion_url(participant: Participant) -> str:
    """The study's redirect URL with ``{code}`` replaced by the participant's completion code."""
    url = participant.study.config.get("redirect_url", "")
    return url.replace("{code}", quote(completion_code(participant), safe="")) if url else ""
