# A WSGI app for gunicorn under clusterd: it answers with the pid of the
# process that served the request and the clusterd slot it belongs to.
#   clusterd run --listen tcp://127.0.0.1:8000 -w 2 --cwd examples/servers/python -- \
#     gunicorn --workers 1 wsgi:app
# or, with the gthread worker:
#   clusterd run --listen tcp://127.0.0.1:8000 -w 2 --cwd examples/servers/python -- \
#     gunicorn --workers 1 --worker-class gthread --threads 4 wsgi:app
import os


def app(environ, start_response):
    body = "hello from gunicorn pid %d, worker %s\n" % (
        os.getpid(), os.environ.get("CLUSTERD_WORKER_ID", "-"))
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]
