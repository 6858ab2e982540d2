# An ASGI app for uvicorn under clusterd: it answers with the pid of the
# process that served the request and the clusterd slot it belongs to.
#   clusterd run --listen tcp://127.0.0.1:8000 -w 2 --cwd examples/servers/python -- \
#     /usr/bin/python3 -m uvicorn --fd 3 asgi:app
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = "hello from uvicorn pid %d, worker %s\n" % (
        os.getpid(), os.environ.get("CLUSTERD_WORKER_ID", "-"))
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
    })
    await send({"type": "http.response.body", "body": body.encode()})
