"""The device's story in the log (relay/logs.py): one INFO line per connect, refused
handshake, turn, push and close, with the same fields as `key=value` text and as JSON
members; a business's mistakes as WARNINGs naming it. Records are caught with caplog and
rendered with both formatters of `[log] format`."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from relay.logs import RESERVED, Every, formatter, safe_url
from relay.logs import story as log_story
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import (
    Device,
    FakeBusiness,
    echo_script,
    is_tts_stop,
    open_stream,
    session_of,
    sse,
)
from tests.relay.test_business_failures import closed_port
from tests.relay.test_mcp import call, mcp_device, tools_of
from tests.relay.test_push_api import CANONICAL, push
from tests.relay.test_simulate import simulate
from tests.test_openapi import check_answer, component, validate

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("relay", "bridges", "protocol", "asr_tts", "metrics", "aioutil", "devsim")
TEXT = formatter("text")
JSON = formatter("json")


@pytest.fixture
def story(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="relay")
    return caplog


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The records of `event` (the text line's first word), each checked to render as one
    text line and as one JSON object whose fields are the record's own."""
    found = [r for r in caplog.records if r.getMessage().split(" ", 1)[0] == event]
    for record in found:
        line = TEXT.format(record)
        assert "\n" not in line, line
        obj = json.loads(JSON.format(record))
        assert obj["message"] == record.getMessage()
        assert obj["level"] == record.levelname
        assert obj["logger"] == record.name
        assert "time" in obj
    return found


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The JSON members of `record` besides the ones every line has."""
    obj: dict[str, Any] = json.loads(JSON.format(record))
    for key in ("message", "level", "logger", "time"):
        del obj[key]
    return obj


async def wait_for(caplog: pytest.LogCaptureFixture, event: str) -> logging.LogRecord:
    async with asyncio.timeout(10):
        while not (found := events(caplog, event)):
            await asyncio.sleep(0.02)
    return found[-1]


async def chat(dev: Device, text: str) -> list[dict[str, Any]]:
    await dev.send(
        {"session_id": dev.session_id, "type": "listen", "state": "detect", "text": text}
    )
    return await dev.recv_until(is_tts_stop)


async def test_a_device_life_is_told_at_info(
    make_relay: RelayFactory, story: pytest.LogCaptureFixture
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    await chat(dev, "what is the time")
    assert dev.audio, "the answer was spoken"
    await dev.ws.close()
    close = await wait_for(story, "close")

    connect = fields(events(story, "connect")[0])
    assert connect["device"] == "669C4BDA13EA"
    assert connect["session"] == dev.session_id
    assert connect["client"] == "c-1"
    assert connect["protocol"] == 1
    assert connect["auth"] == "none"
    assert connect["node"]
    turn = fields(events(story, "turn")[0])
    assert turn["kind"] == "chat"
    assert turn["text"] == "what is the time"
    assert turn["business"] == "fake"
    assert turn["outcome"] == "ok"
    assert turn["status"] == 200
    assert 0 <= turn["first_event_ms"] <= turn["total_ms"]
    assert turn["frames"] == len(dev.audio)
    assert fields(close) | {"duration_ms": 0} == {
        "device": "669C4BDA13EA",
        "session": dev.session_id,
        "code": 1000,
        "reason": "normal",
        "duration_ms": 0,
    }
    assert fields(close)["duration_ms"] >= 0
    text = TEXT.format(events(story, "turn")[0])
    assert 'text="what is the time" business=fake outcome=ok status=200' in text
    assert f"close device=669C4BDA13EA session={dev.session_id} code=1000" in TEXT.format(close)


@pytest.mark.parametrize(("chars", "logged"), [(7, "what is…"), (0, None)])
async def test_the_text_a_user_said_is_cut_or_left_out(
    make_relay: RelayFactory, story: pytest.LogCaptureFixture, chars: int, logged: str | None
) -> None:
    client = await make_relay(log={"stt_chars": chars})
    dev = await Device.connect(client)
    await chat(dev, "what is the time")
    record = await wait_for(story, "turn")
    assert fields(record)["text"] == logged
    assert "the time" not in TEXT.format(record)
    assert "the time" not in JSON.format(record)


async def test_a_refused_handshake_names_its_reason_escaped(
    make_relay: RelayFactory, story: pytest.LogCaptureFixture
) -> None:
    client = await make_relay()
    resp = await client.get(
        "/xiaozhi/v1/", params={"device-id": "evil\nINFO forged", "protocol-version": "9"}
    )
    assert resp.status == 400
    record = await wait_for(story, "refused")
    assert fields(record)["reason"] == "bad_version"
    assert fields(record)["device"] == "evil\\nINFO forged"
    assert 'reason=bad_version device="evil\\nINFO forged"' in TEXT.format(record)


async def test_a_push_is_told(make_relay: RelayFactory, story: pytest.LogCaptureFixture) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    status, _ = await push(client, CANONICAL, b'{"command": {"x": 1}}')
    assert status == 200
    record = await wait_for(story, "push")
    assert fields(record) == {"device": CANONICAL, "session": dev.session_id, "kind": "command"}


async def foreign_session(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """A business that forgets to echo session_id: its own id, then none at all."""
    resp = await open_stream(request)
    answer = {"event": "message", "type": "chat", "details": {"answer": "Hi."}}
    await resp.write(sse({**answer, "session_id": "my-own-session"}))
    await resp.write(sse(answer))
    await resp.write(sse({"event": "message_end", "session_id": session_of(body)}))
    return resp


async def test_dropped_events_are_a_warning_naming_the_business_once_a_minute(
    make_relay: RelayFactory, fake: FakeBusiness, story: pytest.LogCaptureFixture
) -> None:
    fake.script = foreign_session
    client = await make_relay()
    dev = await Device.connect(client)
    await chat(dev, "hello")
    await chat(dev, "hello again")
    await wait_for(story, "turn")
    warnings = events(story, "business_session_mismatch")
    assert len(warnings) == 1, "rate-limited per business"
    record = warnings[0]
    assert record.levelno == logging.WARNING
    got = fields(record)
    assert got["business"] == "fake"
    assert got["dropped"] == 2
    assert got["expected"] == dev.session_id
    assert got["got"] == "my-own-session"
    assert "session_id" in got["hint"]


async def failing(request: web.Request, _body: dict[str, Any]) -> web.StreamResponse:
    return web.Response(status=500, text="boom")


async def test_a_failing_business_is_named_with_its_url_without_credentials(
    make_relay: RelayFactory,
    business: tuple[FakeBusiness, TestServer],
    story: pytest.LogCaptureFixture,
) -> None:
    fake, server = business
    fake.script = failing
    url = f"http://user:s3cret@127.0.0.1:{server.port}/chat?key=k3y"
    client = await make_relay(business_overrides={"url": url})
    dev = await Device.connect(client)
    await chat(dev, "hello")
    record = await wait_for(story, "business_failed")
    assert record.levelno == logging.WARNING
    got = fields(record)
    assert got["business"] == "fake"
    assert got["url"] == f"http://127.0.0.1:{server.port}/chat"
    assert got["outcome"] == "status"
    assert got["status"] == 500
    assert fields(await wait_for(story, "turn"))["status"] == 500
    for r in story.records:
        assert "s3cret" not in TEXT.format(r) + JSON.format(r)
        assert "k3y" not in TEXT.format(r) + JSON.format(r)


def test_every_holds_back_and_counts() -> None:
    now = [0.0]
    every = Every(60.0, clock=lambda: now[0])
    assert every.due("a") == 0
    assert every.due("a") is None
    assert every.due("b") == 0
    now[0] = 61.0
    assert every.due("a") == 1


def test_safe_url_drops_credentials() -> None:
    assert safe_url("https://u:p@[::1]:8443/x?token=t#f") == "https://[::1]:8443/x"
    assert safe_url("http://biz.example/chat") == "http://biz.example/chat"
    assert safe_url("http://[::1") == "<unparsable url>"


async def test_a_simulate_stream_says_why_it_heard_nothing(
    make_relay: RelayFactory, fake: FakeBusiness
) -> None:
    async def only_foreign(request: web.Request, _body: dict[str, Any]) -> web.StreamResponse:
        resp = await open_stream(request)
        await resp.write(sse({"event": "message", "type": "chat", "session_id": "S9"}))
        await resp.write(sse({"event": "message_end", "session_id": "S9"}))
        return resp

    fake.script = only_foreign
    client = await make_relay()
    got = await simulate(client, {"device_id": "d1", "text": "hello"})
    notes = [e.data for e in got if e.name == "diagnostic"]
    assert len(notes) == 1, got
    validate(component("Diagnostic"), notes[0])
    sid = got[0].data["session_id"]
    assert notes[0] == {
        "code": "events_dropped",
        "business": "fake",
        "dropped_session": 2,
        "dropped_invalid": 0,
        "expected_session_id": sid,
        "got_session_id": "S9",
        "hint": notes[0]["hint"],
    }
    assert "session_id" in notes[0]["hint"]
    # The business's good answers carry no diagnostic.
    fake.script = echo_script
    got = await simulate(client, {"device_id": "d1", "text": "hello"})
    assert not [e for e in got if e.name == "diagnostic"]


async def test_a_dead_business_is_a_warning_at_start_and_degrades_readiness(
    make_relay: RelayFactory, story: pytest.LogCaptureFixture
) -> None:
    url = f"http://user:s3cret@127.0.0.1:{closed_port()}/chat"
    client = await make_relay(business_overrides={"url": url})
    record = await wait_for(story, "business_unreachable")
    assert record.levelno == logging.WARNING
    got = fields(record)
    assert (got["business"], got["url"]) == ("fake", url.replace("user:s3cret@", ""))
    resp = await client.get("/readyz")
    ready = check_answer("/readyz", "GET", resp.status, resp.content_type, await resp.read())
    assert resp.status == 200
    assert ready["status"] == "degraded"
    assert ready["reasons"] == ["business_unreachable"]
    assert ready["businesses"] == ["fake"]


async def test_a_live_business_is_ready_and_one_found_dead_later_degrades(
    make_relay: RelayFactory,
    business: tuple[FakeBusiness, TestServer],
    story: pytest.LogCaptureFixture,
) -> None:
    client = await make_relay()
    await wait_for(story, "business_reachable")
    assert (await (await client.get("/readyz")).json()) == {"status": "ready"}
    await business[1].close()  # the business goes away: the next request finds it
    got = await simulate(client, {"device_id": "d1", "text": "hello"})
    assert any(e.data.get("type") == "custom" for e in got)
    ready = await (await client.get("/readyz")).json()
    assert (ready["status"], ready["businesses"]) == ("degraded", ["fake"])


async def test_a_tool_call_is_told(
    make_relay: RelayFactory, story: pytest.LogCaptureFixture
) -> None:
    client = await make_relay()
    await mcp_device(client)
    await tools_of(client)
    status, _ = await call(client, "self.audio_speaker.set_volume", {"arguments": {"volume": 30}})
    assert status == 200
    got = fields(await wait_for(story, "tool_call"))
    assert got["device"] == "669C4BDA13EA"
    assert (got["tool"], got["via"], got["result"]) == (
        "self.audio_speaker.set_volume",
        "api",
        "ok",
    )
    assert got["duration_ms"] >= 0


def _story_calls() -> list[tuple[str, int, str]]:
    """Every `story(...)` call in the relay's packages: (file, line, keyword name)."""
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.parts[len(ROOT.parts)] not in PACKAGES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "story":
                assert all(k.arg is not None for k in node.keywords), f"{path}: **fields"
                found += [(path.name, node.lineno, str(k.arg)) for k in node.keywords]
    return found


def test_no_story_field_overwrites_a_record_attribute_or_a_json_member() -> None:
    # A queued line's fields are not checked when logged (relay/logs.py, `story`): here.
    calls = _story_calls()
    assert len({(f, line) for f, line, _ in calls}) >= 10  # the calls were found
    clashes = [call for call in calls if call[2] in RESERVED]
    assert clashes == []
    assert {"time", "level", "logger", "message", "msg", "args"} <= RESERVED


def test_a_reserved_field_is_refused_where_a_record_is_made(
    story: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(KeyError, match="overwrite"):
        log_story(logging.getLogger("relay.test"), "turn", msg="x")
