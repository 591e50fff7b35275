"""Participant-facing views of a crowdsourced study: the enrolment link, consent, instructions, the
trial sequence (practice with feedback, attention checks, main examples) and the completion code.

A participant only ever reaches their own trials (``/s/<n>/`` numbers the requester's sequence);
answers post opaque per-trial tokens as in ``views``. Refusals are pages with a status and a reason.
"""

from __future__ import annotations

import secrets

from django.contrib.auth import login, logout
from django.db import transaction
from django.db.models import F
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from xaibench.harmony import crowd
from xaibench.harmony.models import Participant, Study, Trial
from xaibench.harmony.views import response_times, save_label, serve_png

ENROL_KEY = "harmony_enrol"  # session key: the checked link, until the consent is answered
BACKEND = "django.contrib.auth.backends.ModelBackend"


def refused(request, status: int, message: str):
    return render(request, "harmony/crowd_refused.html", {"message": message}, status=status)


@require_GET
def join(request, token: str):
    """Check the link; a known identifier resumes its session, a new one goes to the consent page."""
    try:
        link = crowd.read_link(token, request.GET)
        participant = crowd.existing_participant(link["pid_hash"], link["study"])
    except crowd.LinkRefused as err:
        return refused(request, err.status, err.message)
    if participant is not None:
        login(request, participant.user, backend=BACKEND)
        return redirect("harmony:session")
    if request.user.is_authenticated:
        logout(request)
    request.session[ENROL_KEY] = {k: v for k, v in link.items() if k != "study"} | {"study": link["study"].pk}
    return redirect("harmony:consent")


def _participant(request) -> Participant | None:
    if not request.user.is_authenticated:
        return None
    return Participant.objects.filter(user=request.user).select_related("study").first()


def participant_view(view):
    """Only for a participant within their deadline (else a page saying why)."""

    def wrapped(request, *args, **kwargs):
        participant = _participant(request)
        if participant is None:
            return refused(request, 403, "Open the study with the link the platform gave you.")
        if participant.completed_at is None and timezone.now() > crowd.deadline(participant):
            return refused(request, 410, "The time for this study is up; your answers so far are kept. "
                                         "Please return to the platform.")
        return view(request, participant, *args, **kwargs)

    return wrapped


@require_http_methods(["GET", "POST"])
def consent(request):
    enrol = request.session.get(ENROL_KEY)
    if _participant(request) is not None:
        return redirect("harmony:session")
    study = Study.objects.filter(pk=enrol["study"]).first() if enrol else None
    if study is None:
        return refused(request, 400, "Open the study with the link the platform gave you.")
    if request.method == "GET":
        return render(request, "harmony/crowd_consent.html", {"consent": study.consent})
    if request.POST.get("decision") == "accept":
        try:
            participant = crowd.enrol(study, enrol["pid_hash"], enrol["platform"], enrol["session_hash"])
        except crowd.LinkRefused as err:
            return refused(request, err.status, err.message)
        except crowd.StudyFull:
            return refused(request, 403, "This study has all the answers it needs; thank you for your interest. "
                                         "Please return the study on the platform.")
        login(request, participant.user, backend=BACKEND)
        request.session.pop(ENROL_KEY, None)
        return redirect("harmony:instructions")
    if request.POST.get("decision") == "decline":
        Study.objects.filter(pk=study.pk).update(refusals=F("refusals") + 1)
        request.session.flush()
        return render(request, "harmony/crowd_declined.html")
    return refused(request, 400, "Choose whether you agree to take part.")


@require_GET
@participant_view
def instructions(request, participant):
    return render(request, "harmony/crowd_instructions.html",
                  {"instructions": participant.study.instructions, "practice": participant.trials.filter(kind=Trial.PRACTICE).count()})


@require_GET
@participant_view
def session(request, participant):
    """The next unanswered trial, or the completion page."""
    trial = participant.trials.filter(answer="").order_by("position").first()
    if trial is None:
        return redirect("harmony:complete")
    return redirect("harmony:trial", n=trial.position)


def _trial(participant, n: int) -> Trial:
    trial = participant.trials.select_related("example", "item").filter(position=n).first()
    if trial is None:
        raise Http404("no such step")
    return trial


@require_http_methods(["GET", "POST"])
@participant_view
def trial_view(request, participant, n: int):
    trial = _trial(participant, n)
    total = participant.trials.count()
    if request.method == "POST":
        if participant.completed_at is not None:
            return refused(request, 403, "You have completed this study; answers can no longer be changed.")
        token = request.POST.get("choice", "")
        sides = {trial.token_left: "left", trial.token_right: "right", trial.token_neither: "neither"}
        side = next((s for t, s in sides.items() if secrets.compare_digest(t, token)), None)
        if side is None:
            return refused(request, 400, "Unknown answer; reload the page.")
        _save(request, participant, trial, side)
        return redirect("harmony:trial", n=n) if trial.kind == Trial.PRACTICE else redirect("harmony:session")
    if trial.kind == Trial.PRACTICE and trial.answer:
        return render(request, "harmony/crowd_feedback.html", {"trial": trial, "n": n, "total": total,
                                                               "feedback": trial.item.feedback if trial.item_id else ""})
    Trial.objects.filter(pk=trial.pk).update(shown_at=timezone.now())

    def url(slot: str) -> str:
        return reverse("harmony:trial_picture", kwargs={"n": n, "slot": slot})

    context = {
        "n": n, "total": total, "practice": trial.kind == Trial.PRACTICE, "prediction": crowd.prediction(trial),
        "answered": participant.trials.exclude(answer="").count(),
        "image_url": url("image"), "left_url": url("left"), "right_url": url("right"),
        "tokens": {"left": trial.token_left, "right": trial.token_right, "neither": trial.token_neither},
        "chosen": trial.answer,
    }
    return render(request, "harmony/crowd_trial.html", context)


def _save(request, participant: Participant, trial: Trial, side: str) -> None:
    """Store the answer on the trial (and, for a main example, as the participant's label); a
    second answer (another tab, going back) replaces the first."""
    times = response_times(request, trial)
    with transaction.atomic():
        locked = Trial.objects.select_for_update().get(pk=trial.pk)
        revised = bool(locked.answer) and locked.answer != side
        Trial.objects.filter(pk=trial.pk).update(answer=side, answered_at=timezone.now(),
                                                 revisions=F("revisions") + int(revised), **times)
        if trial.kind == Trial.MAIN:
            save_label(participant.user, trial.example_id, trial, side, times)


@require_GET
@participant_view
def trial_picture(request, participant, n: int, slot: str):
    if slot not in {"image", "left", "right"}:
        raise Http404("no such picture")
    return serve_png(crowd.pictures(_trial(participant, n))[slot])


@require_GET
@participant_view
def complete(request, participant):
    """The completion code (and the platform's link) once every trial is answered."""
    if participant.trials.filter(answer="").exists():
        return redirect("harmony:session")
    if participant.completed_at is None:
        Participant.objects.filter(pk=participant.pk, completed_at__isnull=True).update(completed_at=timezone.now())
    return render(request, "harmony/crowd_complete.html",
                  {"code": crowd.completion_code(participant), "redirect_url": crowd.completion_url(participant)})
