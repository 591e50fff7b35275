"""The mask task: images to draw on and one annotation (mask PNG and boxes) per annotator and image."""


import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('harmony', '0004_metric_data'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='MaskImage',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.CharField(help_text='image id in the mask data set', max_length=128, unique=True)),
                ('study', models.CharField(blank=True, default='', help_text='name of the mask data set', max_length=128)),
                ('label', models.CharField(blank=True, default='', help_text='class shown to the annotators', max_length=256)),
                ('image', models.CharField(help_text='media path of the image', max_length=255)),
                ('width', models.PositiveIntegerField()),
                ('height', models.PositiveIntegerField()),
                ('position', models.PositiveIntegerField(default=0)),
                ('source_image', models.CharField(blank=True, default='', help_text='path in the source data set', max_length=512)),
            ],
            options={
                'ordering': ['position', 'id'],
            },
        ),
        migrations.CreateModel(
            name='MaskAnnotation',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('mask', models.CharField(help_text='media path of the binary mask PNG (255 = inside)', max_length=255)),
                ('boxes', models.JSONField(blank=True, default=list, help_text='[[x0, y0, x1, y1], ...] pixels, 0-based, end exclusive')),
                ('inside', models.PositiveIntegerField(default=0, help_text='pixels inside the drawn mask')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('revisions', models.PositiveIntegerField(default=0, help_text='how many times it was saved again')),
                ('annotator', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='harmony_masks', to=settings.AUTH_USER_MODEL)),
                ('image', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='annotations', to='harmony.maskimage')),
            ],
            options={
                'ordering': ['annotator', 'image'],
                'constraints': [models.UniqueConstraint(fields=('annotator', 'image'), name='harmony_mask_unique')],
            },
        ),
    ]
