"""Failed-login counters in a table of their own, counted atomically (one UPDATE per attempt), and
imported (legacy) conditions kept apart from live ones: a condition of the published study's
database (study "harmony-2024", as every import so far named it) becomes ``legacy``, and the names of
a condition are unique among live and among legacy conditions separately."""

from django.db import migrations, models


def mark_imported(apps, schema_editor):
    apps.get_model("harmony", "Condition").objects.filter(study="harmony-2024").update(legacy=True)


class Migration(migrations.Migration):

    dependencies = [
        ('harmony', '0005_mask_task'),
    ]

    operations = [
        migrations.AddField(
            model_name='condition',
            name='legacy',
            field=models.BooleanField(default=False, help_text="imported from a published study's database; never shown"),
        ),
        migrations.RunPython(mark_imported, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name='condition', name='harmony_condition_unique'),
        migrations.AddConstraint(
            model_name='condition',
            constraint=models.UniqueConstraint(fields=('dataset', 'metric', 'model', 'method', 'legacy'),
                                               name='harmony_condition_unique_live_or_legacy'),
        ),
        migrations.CreateModel(
            name='LoginAttempt',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.CharField(max_length=96, unique=True)),
                ('count', models.PositiveIntegerField(default=0)),
                ('expires', models.FloatField(db_index=True, help_text='UNIX time at which the window ends')),
            ],
        ),
    ]
