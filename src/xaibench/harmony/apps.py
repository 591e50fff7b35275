from django.apps import AppConfig


class HarmonyConfig(AppConfig):
    name = "xaibench.harmony"
    label = "harmony"
    verbose_name = "HARMONY study"
    default_auto_field = "django.db.models.BigAutoField"
