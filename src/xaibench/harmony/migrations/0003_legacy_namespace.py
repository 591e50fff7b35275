"""Accounts imported from a legacy database by an older xaibench (under the legacy user name) move
to the ``legacy.`` namespace that ``import-legacy`` now uses, so that importing again adds no second
account for the same annotator and no live account can share their name. An account moves when it
cannot log in (no usable password, not staff), every one of its labels came from an import, and
the new name is free."""

from django.conf import settings
from django.contrib.auth.hashers import is_password_usable
from django.db import migrations

PREFIX = "legacy."


def move_legacy_accounts(apps, schema_editor):
    db = schema_editor.connection.alias
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    Label = apps.get_model("harmony", "Label")
    imported = set(Label.objects.using(db).filter(legacy_id__isnull=False).values_list("annotator_id", flat=True))
    live = set(Label.objects.using(db).filter(legacy_id__isnull=True).values_list("annotator_id", flat=True))
    taken = set(User.objects.using(db).values_list("username", flat=True))
    for user in User.objects.using(db).filter(pk__in=imported - live, is_staff=False, is_superuser=False):
        new = PREFIX + user.username
        if user.username.startswith(PREFIX) or is_password_usable(user.password) or new in taken or len(new) > 150:
            continue
        user.username, user.is_active = new, False
        user.save(update_fields=["username", "is_active"])


class Migration(migrations.Migration):

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("harmony", "0002_client_response_ms_login_cache"),
    ]

    operations = [migrations.RunPython(move_legacy_accounts, migrations.RunPython.noop)]
