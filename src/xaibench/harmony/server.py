"""`xaibench harmony serve`: gunicorn (threaded workers) when installed, else a threaded WSGI server."""

from __future__ import annotations

import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


def _application():
    from xaibench.harmony.wsgi import application

    return application


def serve(host: str, port: int, workers: int = 1, threads: int = 8) -> int:
    from django.db import connections

    application = _application()
    connections.close_all()  # never share a database connection with forked workers
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        BaseApplication = None

    if BaseApplication is None or sys.platform == "win32":
        httpd = make_server(host, port, application, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
        print(f"serving HARMONY on http://{host}:{httpd.server_port}/ (threaded WSGI server; Ctrl-C stops)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()
        return 0

    class Gunicorn(BaseApplication):
        def __init__(self, app, options):
            self.options = options
            self.application = app
            super().__init__()

        def load_config(self):
            for key, value in self.options.items():
                self.cfg.set(key, value)

        def load(self):
            return self.application

    print(f"serving HARMONY on http://{host}:{port}/ (gunicorn, {workers} worker(s) x {threads} threads)", flush=True)
    Gunicorn(
        application,
        {
            "bind": f"{host}:{port}",
            "workers": max(1, workers),
            "threads": max(1, threads),
            "worker_class": "gthread",
            "timeout": 60,
            "graceful_timeout": 5,
            "backlog": 256,
            "accesslog": None,
            "loglevel": "warning",
        },
    ).run()
    return 0
