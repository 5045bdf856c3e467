"""
Plain-text answers: every error the proxy answers itself says what
happened in words.
"""


def plain(request, code, text):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode("utf-8")


def finish_plain(request, code, text):
    body = plain(request, code, text)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()
