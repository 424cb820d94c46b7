"""HTTP error answers, one shape for the API, the OTA check and the device handshake:
`{"error","errorType","hint"}` with the status `protocol.errors` maps the code to."""

from __future__ import annotations

import orjson
from aiohttp import web

from protocol.errors import ApiError, Refusal, api_error_body


def api_error(code: ApiError, error: str, hint: str | None = None) -> web.Response:
    """An HTTP error answer; status and default hint come from `protocol.errors.HTTP`."""
    status, body = api_error_body(code, error, hint)
    return web.json_response(body, status=status)


def refused(exc: Refusal) -> web.Response:
    """The HTTP answer to a refused request."""
    status, body = exc.answer()
    return web.json_response(body, status=status)


_RAISED = {400: web.HTTPBadRequest, 408: web.HTTPRequestTimeout}


def api_exception(code: ApiError, error: str, hint: str | None = None) -> web.HTTPException:
    """The answer of `api_error` as an exception, for where a handler cannot return one (a
    body that cannot be read); the connection closes after it."""
    status, body = api_error_body(code, error, hint)
    exc = _RAISED[status](text=orjson.dumps(body).decode(), content_type="application/json")
    exc.force_close()
    return exc
