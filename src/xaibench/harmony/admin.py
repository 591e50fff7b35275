"""Admin: conditions, examples, assignments, labels, mask images and annotations; per-annotator progress and CSV export (staff only)."""

from __future__ import annotations

import io

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Count, Q
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from xaibench.harmony.export import labels_frame
from xaibench.harmony.forms import AdminLoginForm
from xaibench.harmony.models import (
    Assignment, Condition, Example, Label, MaskAnnotation, MaskImage, Participant, Study, Trial,
)

admin.site.login_form = AdminLoginForm  # failed logins throttled as on the annotators' page


def _csv_response(df, filename: str) -> HttpResponse:
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(Condition)
class ConditionAdmin(admin.ModelAdmin):
    list_display = ("id", "dataset", "metric", "model", "method", "study", "n_examples")
    list_filter = ("dataset", "metric", "model", "method", "study")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_n=Count("examples"))

    @admin.display(ordering="_n", description="examples")
    def n_examples(self, obj):
        return obj._n


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ("id", "condition", "key", "position", "prediction", "label")
    list_filter = ("condition__metric", "condition__model", "condition__method")
    search_fields = ("key", "prediction")
    list_select_related = ("condition",)


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("annotator", "position", "condition")
    list_filter = ("annotator",)
    list_select_related = ("annotator", "condition")


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    change_list_template = "admin/harmony/label/change_list.html"
    list_display = ("annotator", "example", "choice", "finetuned_left", "response_ms", "client_response_ms", "revisions",
                    "updated_at")
    list_filter = ("choice", "annotator", "example__condition__metric", "example__condition__model", "example__condition__method")
    list_select_related = ("annotator", "example__condition")
    raw_id_fields = ("example",)
    actions = ["export_selected"]

    def get_urls(self):
        extra = [
            path("export/", self.admin_site.admin_view(self.export_view), name="harmony_label_export"),
            path("progress/", self.admin_site.admin_view(self.progress_view), name="harmony_label_progress"),
        ]
        return extra + super().get_urls()

    @admin.action(description="Export selected labels as CSV")
    def export_selected(self, request, queryset):
        df = labels_frame()
        ids = set(queryset.values_list("example_id", "annotator__username"))
        df = df[[(e, a) in ids for e, a in zip(df["example_id"], df["annotator"])]]
        return _csv_response(df, "harmony-labels-selected.csv")

    def export_view(self, request):
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        return _csv_response(labels_frame(), "harmony-labels.csv")

    def progress_view(self, request):
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        totals = dict(Condition.objects.annotate(n=Count("examples")).values_list("pk", "n"))
        done = {}
        for user_id, cond_id, n in Label.objects.values_list("annotator_id", "example__condition_id").annotate(n=Count("id")):
            done[(user_id, cond_id)] = n
        rows = []
        users = get_user_model().objects.filter(harmony_assignments__isnull=False).distinct().order_by("username")
        for user in users:
            conds = list(Assignment.objects.filter(annotator=user).order_by("position").values_list("condition_id", flat=True))
            total = sum(totals.get(c, 0) for c in conds)
            labelled = sum(done.get((user.pk, c), 0) for c in conds)
            finished = sum(1 for c in conds if totals.get(c, 0) and done.get((user.pk, c), 0) >= totals[c])
            rows.append({
                "user": user, "cards": len(conds), "finished": finished, "labelled": labelled, "total": total,
                "percent": round(100 * labelled / total, 1) if total else 0.0,
            })
        context = {**self.admin_site.each_context(request), "title": "Progress per annotator", "rows": rows,
                   "opts": self.model._meta, **label_counts()}
        return TemplateResponse(request, "admin/harmony/progress.html", context)


def label_counts() -> dict:
    """Labels per condition and per example (all annotators and participants), with the places held
    by participants' sequences and the sides the fine-tuned map was shown on in them."""
    labels = dict(Label.objects.values_list("example_id").annotate(n=Count("id")))
    held = {r["example_id"]: r for r in Trial.objects.filter(kind=Trial.MAIN).values("example_id").annotate(
        n=Count("id"), left=Count("id", filter=Q(finetuned_left=True)))}
    examples, conditions = [], {}
    for e in Example.objects.select_related("condition").order_by("condition_id", "position", "id"):
        h = held.get(e.pk, {"n": 0, "left": 0})
        row = {"condition": str(e.condition), "key": e.key, "labels": labels.get(e.pk, 0), "assigned": h["n"],
               "left": h["left"], "right": h["n"] - h["left"]}
        examples.append(row)
        c = conditions.setdefault(e.condition_id, {"condition": row["condition"], "examples": 0, "labels": 0, "assigned": 0})
        c["examples"] += 1
        c["labels"] += row["labels"]
        c["assigned"] += row["assigned"]
    return {"per_condition": list(conditions.values()), "per_example": examples}


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ("name", "open", "refusals", "n_participants", "created_at")
    list_editable = ("open",)
    readonly_fields = ("refusals",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_n=Count("participants"))

    @admin.display(ordering="_n", description="participants")
    def n_participants(self, obj):
        return obj._n


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = ("pseudonym", "study", "platform", "enrolled_at", "completed_at")
    list_filter = ("study", "platform")
    readonly_fields = ("user", "study", "pid_hash", "platform", "session_hash", "completion_code", "enrolled_at", "completed_at")


@admin.register(MaskImage)
class MaskImageAdmin(admin.ModelAdmin):
    list_display = ("id", "key", "label", "study", "width", "height")
    list_filter = ("study", "label")
    search_fields = ("key", "label")


@admin.register(MaskAnnotation)
class MaskAnnotationAdmin(admin.ModelAdmin):
    list_display = ("id", "annotator", "image", "inside", "revisions", "updated_at")
    list_filter = ("annotator",)
    readonly_fields = ("annotator", "image", "mask", "boxes", "inside", "revisions", "created_at", "updated_at")
