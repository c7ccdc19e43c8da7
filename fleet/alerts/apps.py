from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "fleet.alerts"
    label = "alerts"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Alerts"

    def ready(self) -> None:
        from fleet.alerts import signals

        signals.connect()
