"""WSGI entry point: ``gunicorn xaibench.harmony.wsgi:application``.

The (small) static files are served by the application itself; a proxy may serve
``collectstatic``'s output at /static/ instead. A static path that leaves the static folders
(``/static/..%2f..``) is a 404 like any other missing file.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xaibench.harmony.settings")

from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.core.exceptions import SuspiciousOperation  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import Http404  # noqa: E402


class StaticFiles(StaticFilesHandler):
    """Django's static-file handler, answering 404 instead of 500 to paths outside the folders."""

    def serve(self, request):
        try:
            return super().serve(request)
        except SuspiciousOperation as err:
            raise Http404("no such static file") from err


application = StaticFiles(get_wsgi_application())
