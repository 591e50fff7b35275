"""WSGI entry point: ``gunicorn xaibench.harmony.wsgi:application``.

The (small) static files are served by the application itself; a proxy may serve
``collectstatic``'s output at /static/ instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xaibench.harmony.settings")

from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = StaticFilesHandler(get_wsgi_application())
