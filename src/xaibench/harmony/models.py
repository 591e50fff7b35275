"""Study conditions, examples, what each annotator was shown, and their labels."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


class Condition(models.Model):
    """One study condition: data set x explanation metric x model x attribution method."""

    dataset = models.CharField(max_length=128)
    metric = models.CharField(max_length=128)
    model = models.CharField(max_length=128)
    method = models.CharField(max_length=128)
    study = models.CharField(max_length=128, blank=True, default="", help_text="name of the study data set")
    legacy = models.BooleanField(default=False, help_text="imported from a published study's database; never shown")
    # what is needed to score the maps after the study (never shown to annotators); empty when unknown
    original_model = models.CharField(max_length=1024, blank=True, default="", help_text="load_model spec")
    finetuned_model = models.CharField(max_length=1024, blank=True, default="", help_text="load_model spec")
    metric_name = models.CharField(max_length=128, blank=True, default="", help_text="xaibench metric registry name")
    method_name = models.CharField(max_length=128, blank=True, default="", help_text="xaibench method registry name")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["metric", "model", "method", "dataset"]
        constraints = [
            # an imported condition never merges into a live one of the same names (nor the reverse)
            models.UniqueConstraint(fields=["dataset", "metric", "model", "method", "legacy"],
                                    name="harmony_condition_unique_live_or_legacy")
        ]

    def __str__(self) -> str:
        return f"{self.dataset} / {self.metric} / {self.model} / {self.method}"


class Example(models.Model):
    """An image, the model's prediction and the two attribution maps (files may be absent for imports)."""

    condition = models.ForeignKey(Condition, on_delete=models.CASCADE, related_name="examples")
    key = models.CharField(max_length=128, help_text="example id in the study data set")
    position = models.PositiveIntegerField(default=0)
    prediction = models.CharField(max_length=256, blank=True, default="")
    label = models.CharField(max_length=256, blank=True, default="", help_text="ground-truth class, if known")
    image = models.CharField(max_length=255, blank=True, default="", help_text="media path of the image")
    original_map = models.CharField(max_length=255, blank=True, default="")
    finetuned_map = models.CharField(max_length=255, blank=True, default="")
    source_image = models.CharField(max_length=512, blank=True, default="", help_text="path in the source data set")
    # the maps as explained (media names of float32 [H, W] .npy files), the object mask (media name
    # of a PNG, nonzero = inside) and the true class index: what metrics need after the study
    original_array = models.CharField(max_length=255, blank=True, default="")
    finetuned_array = models.CharField(max_length=255, blank=True, default="")
    mask = models.CharField(max_length=255, blank=True, default="")
    label_index = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["condition", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["condition", "key"], name="harmony_example_unique")]

    def __str__(self) -> str:
        return f"{self.condition} #{self.key}"


class Assignment(models.Model):
    """A condition an annotator labels; ``position`` numbers the annotator's anonymous cards."""

    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="harmony_assignments")
    condition = models.ForeignKey(Condition, on_delete=models.CASCADE, related_name="assignments")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["annotator", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["annotator", "condition"], name="harmony_assignment_unique")
        ]

    def __str__(self) -> str:
        return f"{self.annotator} -> {self.condition}"


def _token() -> str:
    return secrets.token_urlsafe(12)


class Presentation(models.Model):
    """Server-side blinding of one (annotator, example): which side shows the fine-tuned map, and the
    opaque tokens the three answer buttons post."""

    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="presentations")
    finetuned_left = models.BooleanField()
    token_left = models.CharField(max_length=32, default=_token)
    token_right = models.CharField(max_length=32, default=_token)
    token_neither = models.CharField(max_length=32, default=_token)
    shown_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["annotator", "example"], name="harmony_presentation_unique")
        ]


class Label(models.Model):
    """One answer per (annotator, example); answering again updates it."""

    FINETUNED = "finetuned"
    ORIGINAL = "original"
    NEITHER = "neither"
    CHOICES = [(FINETUNED, "fine-tuned model's map"), (ORIGINAL, "original model's map"), (NEITHER, "neither")]

    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="harmony_labels")
    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="labels")
    choice = models.CharField(max_length=16, choices=CHOICES)
    finetuned_left = models.BooleanField(null=True, blank=True, help_text="side of the fine-tuned map when answered")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    response_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="time to answer measured by the server: page sent to answer received, ms"
    )
    client_response_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="time to answer reported by the browser (not trusted), ms"
    )
    revisions = models.PositiveIntegerField(default=0, help_text="how many times the answer was changed")
    legacy_id = models.BigIntegerField(null=True, blank=True, help_text="label id in an imported database")

    class Meta:
        ordering = ["annotator", "example"]
        constraints = [models.UniqueConstraint(fields=["annotator", "example"], name="harmony_label_unique")]

    def __str__(self) -> str:
        return f"{self.annotator}: {self.example} = {self.choice}"


class MaskImage(models.Model):
    """An image of the mask task: annotators draw the region that justifies its label."""

    key = models.CharField(max_length=128, unique=True, help_text="image id in the mask data set")
    study = models.CharField(max_length=128, blank=True, default="", help_text="name of the mask data set")
    label = models.CharField(max_length=256, blank=True, default="", help_text="class shown to the annotators")
    image = models.CharField(max_length=255, help_text="media path of the image")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    position = models.PositiveIntegerField(default=0)
    source_image = models.CharField(max_length=512, blank=True, default="", help_text="path in the source data set")

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"mask image {self.key}"


class MaskAnnotation(models.Model):
    """One annotator's region for one image; saving again replaces it."""

    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="harmony_masks")
    image = models.ForeignKey(MaskImage, on_delete=models.CASCADE, related_name="annotations")
    mask = models.CharField(max_length=255, help_text="media path of the binary mask PNG (255 = inside)")
    boxes = models.JSONField(default=list, blank=True, help_text="[[x0, y0, x1, y1], ...] pixels, 0-based, end exclusive")
    inside = models.PositiveIntegerField(default=0, help_text="pixels inside the drawn mask")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revisions = models.PositiveIntegerField(default=0, help_text="how many times it was saved again")

    class Meta:
        ordering = ["annotator", "image"]
        constraints = [models.UniqueConstraint(fields=["annotator", "image"], name="harmony_mask_unique")]

    def __str__(self) -> str:
        return f"{self.annotator}: {self.image}"


class LoginAttempt(models.Model):
    """A failed-login counter (``xaibench.harmony.throttle``): attempts under ``key`` until ``expires``."""

    key = models.CharField(max_length=96, unique=True)
    count = models.PositiveIntegerField(default=0)
    expires = models.FloatField(db_index=True, help_text="UNIX time at which the window ends")

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"


# --- crowdsourced studies: participants enrol by a signed link (xaibench.harmony.crowd) ---


class Study(models.Model):
    """A study opened for self-enrolment: the crowdsourcing section of its manifest (validated by
    ``dataset.read_manifest``); its conditions are those whose ``Condition.study`` is ``name``."""

    name = models.CharField(max_length=128, unique=True)
    consent = models.TextField(help_text="consent text shown before anything else")
    instructions = models.TextField()
    config = models.JSONField(default=dict, help_text="catch rate, examples per participant, codes, exclusion rules")
    refusals = models.PositiveIntegerField(default=0, help_text="how many declined the consent (nothing else is kept)")
    open = models.BooleanField(default=True, help_text="accepting new participants")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.name


class CheckItem(models.Model):
    """A practice example or an attention check supplied with a study: an image, a real map and an
    optional obviously wrong one (without it both sides show the real map and "Neither" is expected)."""

    PRACTICE = "practice"
    CATCH = "catch"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(max_length=16, choices=[(PRACTICE, PRACTICE), (CATCH, CATCH)])
    key = models.CharField(max_length=128)
    position = models.PositiveIntegerField(default=0)
    prediction = models.CharField(max_length=256, blank=True, default="")
    image = models.CharField(max_length=255)
    map = models.CharField(max_length=255, help_text="media path of the real map")
    wrong = models.CharField(max_length=255, blank=True, default="", help_text="media path of the wrong map, if any")
    feedback = models.TextField(blank=True, default="", help_text="shown after a practice answer")

    class Meta:
        ordering = ["study", "kind", "position"]
        constraints = [models.UniqueConstraint(fields=["study", "kind", "key"], name="harmony_checkitem_unique")]


class Participant(models.Model):
    """A passwordless account bound to one platform identifier, stored only as a keyed hash
    (``crowd.pid_hash``); one identifier is one participant on this server."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="harmony_participant")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participants")
    pid_hash = models.CharField(max_length=64, help_text="HMAC-SHA256 of the platform identifier")
    platform = models.CharField(max_length=16, help_text="prolific or generic")
    session_hash = models.CharField(max_length=64, blank=True, default="", help_text="HMAC-SHA256 of the platform session id")
    completion_code = models.CharField(max_length=64, blank=True, default="", help_text="own code (empty: the study's)")
    enrolled_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "enrolled_at", "id"]
        constraints = [models.UniqueConstraint(fields=["pid_hash"], name="harmony_participant_pid_unique")]

    @property
    def pseudonym(self) -> str:
        return self.pid_hash[:16]

    def __str__(self) -> str:
        return f"participant {self.pseudonym}"


class Trial(models.Model):
    """One step of a participant's sequence: a practice example, an attention check or a main example
    (whose answer is also the participant's ``Label``). Sides and answer tokens as ``Presentation``."""

    PRACTICE = "practice"
    CATCH = "catch"
    MAIN = "main"
    SIDES = [("left", "left"), ("right", "right"), ("neither", "neither")]

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="trials")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=[(PRACTICE, PRACTICE), (CATCH, CATCH), (MAIN, MAIN)])
    example = models.ForeignKey(Example, null=True, blank=True, on_delete=models.CASCADE, related_name="trials")
    item = models.ForeignKey(CheckItem, null=True, blank=True, on_delete=models.CASCADE, related_name="trials")
    check_kind = models.CharField(max_length=16, blank=True, default="",
                             help_text="practice/catch: 'same' (one map twice) or 'wrong' (a real and a wrong map)")
    finetuned_left = models.BooleanField(help_text="main: side of the fine-tuned map; practice/catch: of the real map")
    image = models.CharField(max_length=255, blank=True, default="", help_text="practice/catch: media path of the image")
    map = models.CharField(max_length=255, blank=True, default="", help_text="practice/catch: the real map")
    wrong = models.CharField(max_length=255, blank=True, default="", help_text="practice/catch: the wrong map, if any")
    expected = models.CharField(max_length=8, blank=True, default="", choices=SIDES, help_text="practice/catch")
    token_left = models.CharField(max_length=32, default=_token)
    token_right = models.CharField(max_length=32, default=_token)
    token_neither = models.CharField(max_length=32, default=_token)
    shown_at = models.DateTimeField(null=True, blank=True)
    answer = models.CharField(max_length=8, blank=True, default="", choices=SIDES)
    answered_at = models.DateTimeField(null=True, blank=True)
    response_ms = models.PositiveIntegerField(null=True, blank=True, help_text="measured by the server, ms")
    client_response_ms = models.PositiveIntegerField(null=True, blank=True, help_text="reported by the browser, ms")
    revisions = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["participant", "position"]
        constraints = [
            models.UniqueConstraint(fields=["participant", "position"], name="harmony_trial_position_unique"),
            models.UniqueConstraint(fields=["participant", "example"], condition=models.Q(kind="main"),
                                    name="harmony_trial_main_unique"),
        ]
