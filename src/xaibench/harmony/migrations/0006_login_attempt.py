"""Failed-login counters in a table of their own, counted atomically (one UPDATE per attempt)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('harmony', '0005_mask_task'),
    ]

    operations = [
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
