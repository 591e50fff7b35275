"""Fields that keep what metrics need after the study: model specs and registry names per condition,
the maps as arrays, the mask and the class index per example (all optional)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('harmony', '0003_legacy_namespace'),
    ]

    operations = [
        migrations.AddField(
            model_name='condition',
            name='finetuned_model',
            field=models.CharField(blank=True, default='', help_text='load_model spec', max_length=1024),
        ),
        migrations.AddField(
            model_name='condition',
            name='method_name',
            field=models.CharField(blank=True, default='', help_text='xaibench method registry name', max_length=128),
        ),
        migrations.AddField(
            model_name='condition',
            name='metric_name',
            field=models.CharField(blank=True, default='', help_text='xaibench metric registry name', max_length=128),
        ),
        migrations.AddField(
            model_name='condition',
            name='original_model',
            field=models.CharField(blank=True, default='', help_text='load_model spec', max_length=1024),
        ),
        migrations.AddField(
            model_name='example',
            name='finetuned_array',
            field=models.CharField(blank=True, default='', max_length=255),
        ),
        migrations.AddField(
            model_name='example',
            name='label_index',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='example',
            name='mask',
            field=models.CharField(blank=True, default='', max_length=255),
        ),
        migrations.AddField(
            model_name='example',
            name='original_array',
            field=models.CharField(blank=True, default='', max_length=255),
        ),
    ]
