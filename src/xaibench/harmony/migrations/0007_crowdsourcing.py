"""Crowdsourced studies: studies open for self-enrolment, their practice and attention-check items,
participants (pseudonymised identifiers) and their trial sequences."""


import django.db.models.deletion
import xaibench.harmony.models
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('harmony', '0006_login_attempt'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Study',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=128, unique=True)),
                ('consent', models.TextField(help_text='consent text shown before anything else')),
                ('instructions', models.TextField()),
                ('config', models.JSONField(default=dict, help_text='catch rate, examples per participant, codes, exclusion rules')),
                ('refusals', models.PositiveIntegerField(default=0, help_text='how many declined the consent (nothing else is kept)')),
                ('open', models.BooleanField(default=True, help_text='accepting new participants')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'verbose_name_plural': 'studies',
            },
        ),
        migrations.CreateModel(
            name='Participant',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('pid_hash', models.CharField(help_text='HMAC-SHA256 of the platform identifier', max_length=64)),
                ('platform', models.CharField(help_text='prolific or generic', max_length=16)),
                ('session_hash', models.CharField(blank=True, default='', help_text='HMAC-SHA256 of the platform session id', max_length=64)),
                ('completion_code', models.CharField(blank=True, default='', help_text="own code (empty: the study's)", max_length=64)),
                ('enrolled_at', models.DateTimeField(auto_now_add=True)),
                ('completed_at', models.DateTimeField(blank=True, null=True)),
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='harmony_participant', to=settings.AUTH_USER_MODEL)),
                ('study', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='participants', to='harmony.study')),
            ],
            options={
                'ordering': ['study', 'enrolled_at', 'id'],
            },
        ),
        migrations.CreateModel(
            name='CheckItem',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('practice', 'practice'), ('catch', 'catch')], max_length=16)),
                ('key', models.CharField(max_length=128)),
                ('position', models.PositiveIntegerField(default=0)),
                ('prediction', models.CharField(blank=True, default='', max_length=256)),
                ('image', models.CharField(max_length=255)),
                ('map', models.CharField(help_text='media path of the real map', max_length=255)),
                ('wrong', models.CharField(blank=True, default='', help_text='media path of the wrong map, if any', max_length=255)),
                ('feedback', models.TextField(blank=True, default='', help_text='shown after a practice answer')),
                ('study', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='items', to='harmony.study')),
            ],
            options={
                'ordering': ['study', 'kind', 'position'],
            },
        ),
        migrations.CreateModel(
            name='Trial',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('position', models.PositiveIntegerField()),
                ('kind', models.CharField(choices=[('practice', 'practice'), ('catch', 'catch'), ('main', 'main')], max_length=16)),
                ('check_kind', models.CharField(blank=True, default='', help_text="practice/catch: 'same' (one map twice) or 'wrong' (a real and a wrong map)", max_length=16)),
                ('finetuned_left', models.BooleanField(help_text='main: side of the fine-tuned map; practice/catch: of the real map')),
                ('image', models.CharField(blank=True, default='', help_text='practice/catch: media path of the image', max_length=255)),
                ('map', models.CharField(blank=True, default='', help_text='practice/catch: the real map', max_length=255)),
                ('wrong', models.CharField(blank=True, default='', help_text='practice/catch: the wrong map, if any', max_length=255)),
                ('expected', models.CharField(blank=True, choices=[('left', 'left'), ('right', 'right'), ('neither', 'neither')], default='', help_text='practice/catch', max_length=8)),
                ('token_left', models.CharField(default=xaibench.harmony.models._token, max_length=32)),
                ('token_right', models.CharField(default=xaibench.harmony.models._token, max_length=32)),
                ('token_neither', models.CharField(default=xaibench.harmony.models._token, max_length=32)),
                ('shown_at', models.DateTimeField(blank=True, null=True)),
                ('answer', models.CharField(blank=True, choices=[('left', 'left'), ('right', 'right'), ('neither', 'neither')], default='', max_length=8)),
                ('answered_at', models.DateTimeField(blank=True, null=True)),
                ('response_ms', models.PositiveIntegerField(blank=True, help_text='measured by the server, ms', null=True)),
                ('client_response_ms', models.PositiveIntegerField(blank=True, help_text='reported by the browser, ms', null=True)),
                ('revisions', models.PositiveIntegerField(default=0)),
                ('example', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='trials', to='harmony.example')),
                ('item', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='trials', to='harmony.checkitem')),
                ('participant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='trials', to='harmony.participant')),
            ],
            options={
                'ordering': ['participant', 'position'],
            },
        ),
        migrations.AddConstraint(
            model_name='participant',
            constraint=models.UniqueConstraint(fields=('pid_hash',), name='harmony_participant_pid_unique'),
        ),
        migrations.AddConstraint(
            model_name='checkitem',
            constraint=models.UniqueConstraint(fields=('study', 'kind', 'key'), name='harmony_checkitem_unique'),
        ),
        migrations.AddConstraint(
            model_name='trial',
            constraint=models.UniqueConstraint(fields=('participant', 'position'), name='harmony_trial_position_unique'),
        ),
        migrations.AddConstraint(
            model_name='trial',
            constraint=models.UniqueConstraint(condition=models.Q(('kind', 'main')), fields=('participant', 'example'), name='harmony_trial_main_unique'),
        ),
    ]
