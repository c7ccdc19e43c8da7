import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tinyfleet.settings")
_django = get_wsgi_application()

from fleet.state import DeviceFastPathApp  # noqa: E402  (needs the apps loaded)

# Unchanged device polls are answered before Django's handler (fleet/state.py).
application = DeviceFastPathApp(_django)
