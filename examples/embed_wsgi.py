"""
Publish a WSGI application through a brickproxy from inside this program,
with no local port: the client serves the application in-process
(twisted.web's WSGIResource over in-memory connections).

    python examples/embed_wsgi.py [PROXY_URL [KEY_PATH]]

e.g. with ``twistd -n brickproxy --domain localhost`` running:

    python examples/embed_wsgi.py http://localhost:6519
    curl http://<clientID>.localhost:6519/hello

Keep the key file to keep the hostname.  Ctrl-C stops.
"""

import sys

from twisted.internet import defer, task
from twisted.web.wsgi import WSGIResource

from brickchain_proxy.client import TunnelClientService


def application(environ, start_response):
    """
    A plain WSGI application (no framework needed; Flask or Django work the
    same way).
    """
    body = environ["wsgi.input"].read()
    text = "Hello from inside the program: {} {} ({} bytes)\n".format(
        environ["REQUEST_METHOD"], environ["PATH_INFO"], len(body))
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode("utf-8")]


async def main(reactor, proxy_url="http://localhost:6519",
               key_path="embed-wsgi.pem"):
    # WSGI applications run in threads; the reactor's pool is stopped with it.
    resource = WSGIResource(reactor, reactor.getThreadPool(), application)
    client = TunnelClientService(reactor, proxy_url, resource, key_path)
    client.startService()
    reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
    registration = await client.when_registered()
    print("public URL:", registration.url, flush=True)
    print("path URL:", registration.path_url, flush=True)
    await defer.Deferred()  # serve until the process is stopped


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
