"""Response times: ``response_ms`` is now measured by the server and the browser's own figure is kept
in ``client_response_ms``. Labels saved before this migration held the browser's figure (or, when
none was sent, the server's) in ``response_ms``; it moves to ``client_response_ms``. Also creates
the database cache table that holds the failed-login counters."""

from django.core.management import call_command
from django.db import migrations, models
from django.db.models import F


def move_client_times(apps, schema_editor):
    Label = apps.get_model("harmony", "Label")
    Label.objects.using(schema_editor.connection.alias).update(client_response_ms=F("response_ms"), response_ms=None)


def move_back(apps, schema_editor):
    Label = apps.get_model("harmony", "Label")
    Label.objects.using(schema_editor.connection.alias).update(response_ms=F("client_response_ms"))


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):

    dependencies = [
        ("harmony", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="label",
            name="client_response_ms",
            field=models.PositiveIntegerField(blank=True, help_text="time to answer reported by the browser (not trusted), ms", null=True),
        ),
        migrations.AlterField(
            model_name="label",
            name="response_ms",
            field=models.PositiveIntegerField(blank=True, help_text="time to answer measured by the server: page sent to answer received, ms", null=True),
        ),
        migrations.RunPython(move_client_times, move_back),
        migrations.RunPython(create_cache_table, migrations.RunPython.noop),
    ]
