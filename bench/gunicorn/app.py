# The WSGI application of bench/compare.sh for gunicorn (sync workers):
# it answers "pid=N".
#   gunicorn -w 2 -b 127.0.0.1:8080 --chdir bench/gunicorn app:app
import os


def app(environ, start_response):
    body = ("pid=%d\n" % os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
