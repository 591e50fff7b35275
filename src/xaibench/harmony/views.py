"""Annotator-facing views. Nothing here reveals which map is which: sides are decided and stored
server-side (``Presentation``), the answer buttons post opaque per-(annotator, example) tokens and
pictures are served under neutral names (``image``, ``left``, ``right``). Each annotator sees the
examples of a condition in their own order (``example_order``)."""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from xaibench.harmony.forms import LoginForm
from xaibench.harmony.models import Assignment, Example, Label, MaskAnnotation, MaskImage, Presentation, Trial

MAX_RESPONSE_MS = 24 * 3600 * 1000


class LoginView(auth_views.LoginView):
    """Django's login page with failed-login throttling; a throttled attempt is answered 429."""

    form_class = LoginForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled:
            response.status_code = 429
        return response


def _assignments(user) -> list[Assignment]:
    assignments = Assignment.objects.filter(annotator=user, condition__legacy=False)  # imported data is never shown
    return list(assignments.select_related("condition").order_by("position", "id"))


def _assignment(user, card: int) -> Assignment:
    assignments = _assignments(user)
    if card < 1 or card > len(assignments):
        raise Http404("no such card")
    return assignments[card - 1]


def example_order(assignment: Assignment) -> list[int]:
    """Example ids of the assignment's condition in its annotator's order: sorted by a hash of
    (annotator, example), so every annotator has an own order that is the same on every request
    and keeps the relative order of the examples already there when new ones are loaded."""
    ids = assignment.condition.examples.values_list("id", flat=True)
    return sorted(ids, key=lambda i: hashlib.blake2b(f"{assignment.annotator_id}:{i}".encode(), digest_size=8).digest())


def _labelled_ids(user, example_ids: list[int]) -> set[int]:
    return set(Label.objects.filter(annotator=user, example_id__in=example_ids).values_list("example_id", flat=True))


def _presentation(user, example_id: int) -> Presentation:
    try:
        return Presentation.objects.get(annotator=user, example_id=example_id)
    except Presentation.DoesNotExist:
        pass
    try:
        with transaction.atomic():
            return Presentation.objects.create(
                annotator=user, example_id=example_id, finetuned_left=bool(secrets.randbelow(2))
            )
    except IntegrityError:  # created concurrently by another request of the same annotator
        return Presentation.objects.get(annotator=user, example_id=example_id)


@login_required
@require_GET
def home(request):
    if hasattr(request.user, "harmony_participant"):  # a participant's own sequence
        return redirect("harmony:session")
    cards = []
    for number, assignment in enumerate(_assignments(request.user), start=1):
        ids = example_order(assignment)
        done = len(_labelled_ids(request.user, ids))
        total = len(ids)
        cards.append(
            {
                "number": number,
                "done": done,
                "total": total,
                "percent": round(100 * done / total) if total else 100,
                "complete": done >= total,
            }
        )
    masks = None
    total = MaskImage.objects.count()
    if total:
        done = MaskAnnotation.objects.filter(annotator=request.user).count()
        masks = {"done": done, "total": total, "percent": round(100 * done / total), "complete": done >= total}
    return render(request, "harmony/home.html", {"cards": cards, "masks": masks})


@login_required
@require_GET
def card_start(request, card: int):
    assignment = _assignment(request.user, card)
    ids = example_order(assignment)
    labelled = _labelled_ids(request.user, ids)
    for n, example_id in enumerate(ids, start=1):
        if example_id not in labelled:
            return redirect("harmony:example", card=card, n=n)
    return redirect("harmony:done", card=card)


@login_required
@require_GET
def card_done(request, card: int):
    assignment = _assignment(request.user, card)
    ids = example_order(assignment)
    labelled = _labelled_ids(request.user, ids)
    missing = [n for n, example_id in enumerate(ids, start=1) if example_id not in labelled]
    return render(
        request,
        "harmony/done.html",
        {"card": card, "total": len(ids), "done": len(ids) - len(missing), "first_missing": missing[0] if missing else None},
    )


def _side_of(label: Label | None, presentation: Presentation) -> str | None:
    if label is None:
        return None
    if label.choice == Label.NEITHER:
        return "neither"
    return "left" if (label.choice == Label.FINETUNED) == presentation.finetuned_left else "right"


def save_label(user, example_id: int, presentation: Presentation | Trial, side: str, times: dict[str, int | None]) -> None:
    if side == "neither":
        choice = Label.NEITHER
    else:
        choice = Label.FINETUNED if (side == "left") == presentation.finetuned_left else Label.ORIGINAL
    with transaction.atomic():
        label = Label.objects.select_for_update().filter(annotator=user, example_id=example_id).first()
        if label is None:
            try:
                with transaction.atomic():
                    Label.objects.create(
                        annotator=user,
                        example_id=example_id,
                        choice=choice,
                        finetuned_left=presentation.finetuned_left,
                        **times,
                    )
                return
            except IntegrityError:  # a concurrent request of the same annotator created it
                label = Label.objects.select_for_update().get(annotator=user, example_id=example_id)
        if label.choice != choice:
            label.revisions += 1
        label.choice = choice
        label.finetuned_left = presentation.finetuned_left
        for field, value in times.items():
            setattr(label, field, value)
        label.save()


def response_times(request, presentation: Presentation | Trial) -> dict[str, int | None]:
    """``response_ms``: from the last time the server sent the page to receiving the answer;
    ``client_response_ms``: what the browser reports (``rt``), kept for comparison, never trusted.
    Either is None when unknown or outside [0, 24 h]."""
    server = None
    if presentation.shown_at is not None:
        server = int((timezone.now() - presentation.shown_at).total_seconds() * 1000)
    try:
        client = int(float(request.POST.get("rt", "")[:32]))
    except (TypeError, ValueError, OverflowError):
        client = None
    return {
        "response_ms": server if server is not None and 0 <= server <= MAX_RESPONSE_MS else None,
        "client_response_ms": client if client is not None and 0 <= client <= MAX_RESPONSE_MS else None,
    }


@login_required
@require_http_methods(["GET", "POST"])
def label_example(request, card: int, n: int):
    assignment = _assignment(request.user, card)
    ids = example_order(assignment)
    if n < 1 or n > len(ids):
        raise Http404("no such example")
    example_id = ids[n - 1]
    presentation = _presentation(request.user, example_id)

    if request.method == "POST":
        token = request.POST.get("choice", "")
        sides = {
            presentation.token_left: "left",
            presentation.token_right: "right",
            presentation.token_neither: "neither",
        }
        side = next((s for t, s in sides.items() if secrets.compare_digest(t, token)), None)
        if side is None:
            return HttpResponseBadRequest("unknown answer; reload the page")
        save_label(request.user, example_id, presentation, side, response_times(request, presentation))
        if n < len(ids):
            return redirect("harmony:example", card=card, n=n + 1)
        return redirect("harmony:card", card=card)

    Presentation.objects.filter(pk=presentation.pk).update(shown_at=timezone.now())
    example = Example.objects.get(pk=example_id)
    label = Label.objects.filter(annotator=request.user, example_id=example_id).first()
    labelled = _labelled_ids(request.user, ids)

    def picture_url(slot: str, stored: str) -> str | None:
        return reverse("harmony:picture", kwargs={"card": card, "n": n, "slot": slot}) if stored else None

    left, right = (
        (example.finetuned_map, example.original_map)
        if presentation.finetuned_left
        else (example.original_map, example.finetuned_map)
    )
    context = {
        "card": card,
        "n": n,
        "total": len(ids),
        "answered": len(labelled),
        "prediction": example.prediction,
        "image_url": picture_url("image", example.image),
        "left_url": picture_url("left", left),
        "right_url": picture_url("right", right),
        "tokens": {
            "left": presentation.token_left,
            "right": presentation.token_right,
            "neither": presentation.token_neither,
        },
        "chosen": _side_of(label, presentation),
        "previous": n - 1 if n > 1 else None,
        "next": n + 1 if (label is not None and n < len(ids)) else None,
    }
    return render(request, "harmony/label.html", context)


@login_required
@require_GET
def picture(request, card: int, n: int, slot: str):
    if slot not in {"image", "left", "right"}:
        raise Http404("no such picture")
    assignment = _assignment(request.user, card)
    ids = example_order(assignment)
    if n < 1 or n > len(ids):
        raise Http404("no such example")
    example = Example.objects.get(pk=ids[n - 1])
    if slot == "image":
        stored = example.image
    else:
        presentation = _presentation(request.user, example.pk)
        finetuned = (slot == "left") == presentation.finetuned_left
        stored = example.finetuned_map if finetuned else example.original_map
    return serve_png(stored)


def serve_png(stored: str) -> HttpResponse:
    """A stored PNG for its requester only (``private, no-store``, no file name); 404 when absent."""
    if not stored or not default_storage.exists(stored):
        raise Http404("picture not available")
    with default_storage.open(stored, "rb") as fh:
        response = HttpResponse(fh.read(), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


# --- the mask task: draw the region that justifies the label (xaibench.harmony.masks) ---


def _mask_image(user, n: int) -> tuple[list[int], MaskImage]:
    from xaibench.harmony.masks import image_order

    ids = image_order(user.pk)
    if n < 1 or n > len(ids):
        raise Http404("no such image")
    return ids, MaskImage.objects.get(pk=ids[n - 1])


@login_required
@require_GET
def mask_start(request):
    from xaibench.harmony.masks import image_order

    ids = image_order(request.user.pk)
    done = set(MaskAnnotation.objects.filter(annotator=request.user).values_list("image_id", flat=True))
    for n, image_id in enumerate(ids, start=1):
        if image_id not in done:
            return redirect("harmony:mask", n=n)
    return render(request, "harmony/masks_done.html", {"total": len(ids)})


@login_required
@require_http_methods(["GET", "POST"])
def mask_draw(request, n: int):
    from xaibench.errors import InputError
    from xaibench.harmony.masks import parse_boxes, parse_mask, save_annotation

    ids, image = _mask_image(request.user, n)
    if request.method == "POST":
        try:
            mask = parse_mask(request.POST.get("mask", ""), image.width, image.height)
            boxes = parse_boxes(request.POST.get("boxes", ""), image.width, image.height)
        except InputError as err:
            return HttpResponseBadRequest(f"{err}; reload the page")
        if not mask.any() and not boxes:
            return HttpResponseBadRequest("nothing drawn: draw the region (or a box) first")
        save_annotation(request.user, image, mask, boxes)
        return redirect("harmony:mask", n=n + 1) if n < len(ids) else redirect("harmony:masks")
    mine = MaskAnnotation.objects.filter(annotator=request.user, image=image).first()
    done = MaskAnnotation.objects.filter(annotator=request.user).count()
    context = {
        "n": n, "total": len(ids), "done": done, "label": image.label, "width": image.width, "height": image.height,
        "image_url": reverse("harmony:mask_picture", kwargs={"n": n, "slot": "image"}),
        "mine_url": reverse("harmony:mask_picture", kwargs={"n": n, "slot": "mine"}) if mine else "",
        "boxes": mine.boxes if mine else [],
        "saved": mine is not None,
        "previous": n - 1 if n > 1 else None,
        "next": n + 1 if (mine is not None and n < len(ids)) else None,
    }
    return render(request, "harmony/mask.html", context)


@login_required
@require_GET
def mask_picture(request, n: int, slot: str):
    """The image, or the annotator's own saved mask (``mine``); nobody else's."""
    _, image = _mask_image(request.user, n)
    if slot == "image":
        stored = image.image
    elif slot == "mine":
        mine = MaskAnnotation.objects.filter(annotator=request.user, image=image).first()
        stored = mine.mask if mine else ""
    else:
        raise Http404("no such picture")
    return serve_png(stored)
