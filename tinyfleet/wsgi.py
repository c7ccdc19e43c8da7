import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tinyfleet.settings")
_django = get_wsgi_application()

from fleet.api.fastpath import DeviceFastPathApp  # noqa: E402  (needs the apps loaded)

# Unchanged device polls and deferred telemetry are answered before Django's handler.
application = DeviceFastPathApp(_django)
