"""docs/postman_collection.json: generated from docs/openapi.yaml by scripts/postman.py, up to
date, covering every HTTP operation, and every request in it answered by a running relay as
the spec documents."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from asr_tts.asr.base import wav_from_pcm
from tests.test_openapi import AUTH, ROOT, SPEC, TOKEN, LiveRelay, check_answer, response_spec

COLLECTION_PATH = ROOT / "docs" / "postman_collection.json"
COLLECTION: dict[str, Any] = json.loads(COLLECTION_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def requests() -> Iterator[dict[str, Any]]:
    for folder in COLLECTION["item"]:
        for item in folder["item"]:
            yield item["request"]


def spec_path(request: dict[str, Any]) -> str:
    """The spec's path template for a collection URL (`:x` back to `{x}`)."""
    segments = ["{" + s[1:] + "}" if s.startswith(":") else s for s in request["url"]["path"]]
    return (
        "/"
        + "/".join(segments)
        + ("/" if request["url"]["raw"].split("?")[0].endswith("/") else "")
    )


def test_the_committed_collection_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/postman.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_http_operation_is_in_the_collection_once() -> None:
    expected = {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and "101" not in operation["responses"]
    }
    found = [(r["method"], spec_path(r)) for r in requests()]
    assert sorted(found) == sorted(expected)
    assert COLLECTION["info"]["schema"].endswith("/v2.1.0/collection.json")
    for request in requests():
        operation = SPEC["paths"][spec_path(request)][request["method"].lower()]
        open_ = operation.get("security") == []
        assert (request.get("auth") == {"type": "noauth"}) == open_, spec_path(request)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveRelay]:
    with LiveRelay() as stack:
        yield stack


async def send(http: aiohttp.ClientSession, live: LiveRelay, request: dict[str, Any]) -> None:
    """Send one collection request as Postman would, with {{baseUrl}} and {{token}} set."""
    url = request["url"]
    raw = url["raw"].replace("{{baseUrl}}", live.base_url)
    for variable in url.get("variable", []):
        raw = raw.replace(":" + variable["key"], variable["value"])
    headers = {h["key"]: h["value"] for h in request["header"] if not h.get("disabled")}
    if request.get("auth") != {"type": "noauth"}:
        headers.update(AUTH)
    body = request.get("body", {})
    # A file body is the user's pick: here a second of silence as a WAV (heard as "").
    payload = body["raw"].encode() if "raw" in body else None
    if body.get("mode") == "file":
        payload = wav_from_pcm(bytes(32000))
    async with http.request(request["method"], raw, headers=headers, data=payload) as resp:
        data = await resp.read()
        path, method = spec_path(request), request["method"]
        # The tools requests meet a device that declared no MCP: 409 `mcp_unsupported`, which
        # check_answer holds to the spec like any answer.
        ok = resp.status < 300 or ("/tools" in path and resp.status == 409)
        assert ok, (request["method"], raw, resp.status, data[:300])
        if data:
            check_answer(path, method, resp.status, resp.headers["Content-Type"], data)
        else:  # a documented answer without a body (the CORS preflight's 204)
            assert not response_spec(path, method, resp.status).get("content")


def test_every_request_of_the_collection_is_answered_as_documented(live: LiveRelay) -> None:
    assert TOKEN in AUTH["Authorization"]

    async def run_all() -> None:
        async with aiohttp.ClientSession() as http:
            for request in requests():
                await send(http, live, request)

    live.run(run_all(), timeout=120)
