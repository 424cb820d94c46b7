"""The reference business service answers every request type per docs/protocol.md §2."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from examples import business_service
from examples.business_service import make_app, parse_args
from tests.relay.test_cli import ROOT, clean_env, stop, wait_http
from tests.relay.test_simulate import closed_port

Event = dict[str, Any]
SID = "session_12345"


def request_body(type_: str, **details: Any) -> dict[str, Any]:
    """A request as the relay sends it, with the session id in details."""
    return {
        "auth": {"device_id": "669C4BDA13EA"},
        "type": type_,
        "details": {"session_id": SID, **details},
    }


def parse_sse(raw: bytes) -> list[Event]:
    """Split the stream into events, checking the framing is exactly `data: <json>\\n\\n`."""
    text = raw.decode()
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ")
        assert "\n" not in block
        event = orjson.loads(block.removeprefix("data: "))
        assert isinstance(event, dict)
        events.append(event)
    return events


async def post(
    aiohttp_client: AiohttpClient, body: object, *, path: str = "/chat", **app_kwargs: Any
) -> list[Event]:
    """POST a body to a fresh service and return its parsed SSE events."""
    client = await aiohttp_client(make_app(**app_kwargs))
    resp = await client.post(path, json=body)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    events = parse_sse(await resp.read())
    assert events[-1] == {"event": "message_end", "session_id": SID}
    assert all(event["session_id"] == SID for event in events)
    return events


def answers(events: list[Event]) -> list[str]:
    return [e["details"]["answer"] for e in events if e.get("type") == "chat"]


@pytest.mark.parametrize("path", ["/chat", "/"])
async def test_chat_in_english_echoes_the_message(aiohttp_client: AiohttpClient, path: str) -> None:
    events = await post(aiohttp_client, request_body("chat", msg="How is the weather?"), path=path)
    text = " ".join(answers(events))
    assert "How is the weather?" in text
    assert not business_service.is_chinese(text)
    assert [e["event"] for e in events[:-1]] == ["message"] * (len(events) - 1)
    assert all(e["type"] == "chat" for e in events[:-1])  # no keyword, so no command


async def test_chat_in_chinese_answers_in_chinese(aiohttp_client: AiohttpClient) -> None:
    events = await post(aiohttp_client, request_body("chat", msg="今天天气怎么样"))
    text = "".join(answers(events))
    assert "今天天气怎么样" in text
    assert "You said" not in text
    assert business_service.is_chinese(text.replace("今天天气怎么样", ""))


# The faces the xiaozhi firmware can show (docs/protocol.md §2.2 details.emotion).
FIRMWARE_EMOTIONS = {
    *("neutral", "happy", "laughing", "funny", "sad", "angry", "crying", "loving"),
    *("embarrassed", "surprised", "shocked", "thinking", "winking", "cool", "relaxed"),
    *("delicious", "kissy", "confident", "sleepy", "silly", "confused"),
}


@pytest.mark.parametrize(
    ("msg", "emotion"),
    [
        ("Hello!", "happy"),
        ("hi there", "happy"),
        ("Good morning, robot", "happy"),
        ("你好", "happy"),
        ("How is the weather?", "thinking"),
        ("what time is it", "thinking"),
        ("今天天气怎么样", "thinking"),
        ("This is a story", "neutral"),  # "hi" inside a word is no greeting
        ("Please wag your tail", "neutral"),
        ("", "confused"),
        ("   ", "confused"),
    ],
)
async def test_chat_answer_carries_an_emotion_on_its_first_event(
    aiohttp_client: AiohttpClient, msg: str, emotion: str
) -> None:
    events = await post(aiohttp_client, request_body("chat", msg=msg))
    chats = [e for e in events if e.get("type") == "chat"]
    assert chats[0]["details"]["emotion"] == emotion
    assert emotion in FIRMWARE_EMOTIONS
    assert all("emotion" not in e["details"] for e in chats[1:])  # said once per answer


@pytest.mark.parametrize(
    ("msg", "action", "duration"),
    [
        ("Please wag your tail", "wag_tail", 3),
        ("摇尾巴吧", "wag_tail", 3),
        ("DANCE!", "dance", 5),
        ("跳舞", "dance", 5),
    ],
)
async def test_chat_keyword_sends_a_command_after_the_answer(
    aiohttp_client: AiohttpClient, msg: str, action: str, duration: int
) -> None:
    events = await post(aiohttp_client, request_body("chat", msg=msg))
    assert answers(events)
    assert events[-2] == {
        "event": "message",
        "type": "command",
        "session_id": SID,
        "details": {"actions": [{"action": action, "params": {"duration": duration}}]},
    }
    assert all(e.get("type") == "chat" for e in events[:-2])


async def test_report_answers_only_message_end(aiohttp_client: AiohttpClient) -> None:
    body = request_body(
        "report", events=[{"event": "touch", "params": {"count": 1}}], battery_level=85
    )
    assert await post(aiohttp_client, body) == [{"event": "message_end", "session_id": SID}]


async def test_reset_answers_reset_complete(aiohttp_client: AiohttpClient) -> None:
    events = await post(aiohttp_client, request_body("reset", type="count", reason="user_request"))
    assert events[0] == {
        "event": "message",
        "type": "command",
        "session_id": SID,
        "details": {"actions": [{"action": "reset_complete", "params": {"status": "success"}}]},
    }
    assert len(events) == 2


async def test_get_answers_time_and_battery(aiohttp_client: AiohttpClient) -> None:
    before_ms = time.time() * 1000
    events = await post(
        aiohttp_client, request_body("get", events=[{"event": "getCurrentTime", "params": {}}])
    )
    assert len(events) == 2
    assert (events[0]["event"], events[0]["type"]) == ("message", "command")
    [action] = events[0]["details"]["actions"]
    assert action["action"] == "data_response"
    params = action["params"]
    assert before_ms - 1 <= params["timestamp_ms"] <= time.time() * 1000 + 1
    iso = datetime.fromisoformat(params["iso_time"])
    assert iso.tzinfo is not None
    assert abs(iso.timestamp() * 1000 - params["timestamp_ms"]) < 1
    assert datetime.strptime(params["current_time"], "%Y-%m-%d %H:%M:%S")
    assert 0 <= params["battery_level"] <= 100


async def test_unknown_type_answers_an_error_event(aiohttp_client: AiohttpClient) -> None:
    events = await post(aiohttp_client, request_body("dance_party"))
    assert len(events) == 2
    assert events[0]["event"] == "error"
    assert events[0]["details"]["code"] == "unknown_type"
    assert "dance_party" in events[0]["details"]["message"]


async def test_session_id_is_omitted_when_the_request_has_none(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.post("/chat", json={"type": "chat", "details": {"msg": "wag"}})
    events = parse_sse(await resp.read())
    assert [e["event"] for e in events] == ["message", "message", "message", "message_end"]
    assert all("session_id" not in e for e in events)


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "secret", "Basic c2VjcmV0", "Bearer secret2"]
)
async def test_bad_or_missing_token_is_401(
    aiohttp_client: AiohttpClient, authorization: str | None
) -> None:
    client = await aiohttp_client(make_app(token="secret"))
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = await client.post("/chat", json=request_body("report"), headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]


async def test_right_token_is_accepted(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(token="secret"))
    headers = {"Authorization": "Bearer secret"}
    resp = await client.post("/chat", json=request_body("report"), headers=headers)
    assert resp.status == 200
    assert parse_sse(await resp.read()) == [{"event": "message_end", "session_id": SID}]


SECRET = "s1gning-secret"


def signed(body: bytes, t: int, secret: str = SECRET) -> str:
    """X-Relay-Signature for `body` at `t`, computed here from the documented formula."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


BODY = orjson.dumps(request_body("report"))


# Each takes the current time: a header made when the tests are collected would age.
BAD_SIGNATURES: dict[str, Callable[[int], str | None]] = {
    "missing": lambda now: None,
    "empty": lambda now: "",
    "empty fields": lambda now: "t=,v1=",
    "wrong secret": lambda now: signed(BODY, now, secret="another-secret"),
    "other bytes": lambda now: signed(BODY + b" ", now),
    "too old (a replay)": lambda now: signed(BODY, now - 310),
    "too far ahead": lambda now: signed(BODY, now + 310),
    "upper-case hex": lambda now: signed(BODY, now).upper(),
    "not an ASCII number": lambda now: signed(BODY, now).replace("t=", "t=\u0661"),
    "zero mac": lambda now: f"v1={'0' * 64},t={now}",
}


@pytest.mark.parametrize("case", list(BAD_SIGNATURES))
async def test_bad_or_missing_signature_is_401(aiohttp_client: AiohttpClient, case: str) -> None:
    client = await aiohttp_client(make_app(signing_secret=SECRET))
    headers = {"Content-Type": "application/json"}
    header = BAD_SIGNATURES[case](int(time.time()))
    if header is not None:
        headers["X-Relay-Signature"] = header
    resp = await client.post("/chat", data=BODY, headers=headers)
    assert resp.status == 401
    assert "X-Relay-Signature" in (await resp.json())["error"]


@pytest.mark.parametrize("skew", [0, -280, 280])
async def test_good_signature_is_accepted(aiohttp_client: AiohttpClient, skew: int) -> None:
    client = await aiohttp_client(make_app(signing_secret=SECRET, token="secret"))
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer secret",
        "X-Relay-Signature": signed(BODY, int(time.time()) + skew),
    }
    resp = await client.post("/chat", data=BODY, headers=headers)
    assert resp.status == 200
    assert parse_sse(await resp.read()) == [{"event": "message_end", "session_id": SID}]


async def test_without_a_secret_no_signature_is_needed(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.post("/chat", data=BODY, headers={"X-Relay-Signature": "t=1,v1=bad"})
    assert resp.status == 200


def test_relay_signed_matches_the_documented_example() -> None:
    body = (
        b'{"auth":{"device_id":"669C4BDA13EA"},"type":"chat","details":{"msg":"hello",'
        b'"session_id":"q3JxVwQyX1m8W9cUe0m4ZQ","timestamp":1717000000000}}'
    )
    header = "t=1717000000,v1=08b82e2a10cd3667c28ff49d4b96c07b3c7f00538ea2e60e4e3c837fc7d5e1ae"
    assert header == signed(body, 1717000000, secret="change-me")
    assert business_service.relay_signed(b"change-me", header, body, now=1717000000 + 300)
    assert not business_service.relay_signed(b"change-me", header, body, now=1717000000 + 301)


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"", b"[1, 2]", b'"chat"', b'{"details": {}}', b'{"type": 3}', b'{"type": null}'],
)
async def test_bad_body_is_400(aiohttp_client: AiohttpClient, raw: bytes) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.post("/chat", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert isinstance(body["error"], str)


async def test_events_are_written_as_they_are_produced(aiohttp_client: AiohttpClient) -> None:
    delay = 0.2
    client = await aiohttp_client(make_app(chat_delay_s=delay))
    resp = await client.post("/chat", json=request_body("chat", msg="hello"))
    first = await resp.content.readuntil(b"\n\n")
    received_first = time.monotonic()
    rest = await resp.content.read()
    # A buffered answer would deliver the rest together with the first event.
    assert time.monotonic() - received_first >= delay * 0.8
    assert parse_sse(first)[0]["type"] == "chat"
    assert parse_sse(rest)[-1]["event"] == "message_end"


async def until_logged(path: Path, text: str, count: int, timeout: float = 10.0) -> None:
    """Wait until `path` holds `count` lines with `text`, or a traceback; bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        log = await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")
        if "Traceback" in log or sum(text in line for line in log.splitlines()) >= count:
            return
        await asyncio.sleep(0.05)


async def test_a_client_gone_mid_answer_is_no_error_and_the_next_is_answered(
    tmp_path: Path,
) -> None:
    # The relay closes the connection in the middle of an answer when it cancels a turn (an
    # abort, a barge-in): the service, run as a newcomer runs it, must take that quietly.
    port = closed_port()
    url = f"http://127.0.0.1:{port}/chat"
    log_path = tmp_path / "business.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("examples/business_service.py", "--port", str(port), "--chat-delay", "0.1"),
            cwd=ROOT,
            env=clean_env(),
            stdout=log_file,
            stderr=log_file,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await wait_http(http, f"http://127.0.0.1:{port}/", proc)
                for _ in range(3):
                    resp = await http.post(url, json=request_body("chat", msg="Tell me a story"))
                    assert resp.status == 200
                    first = parse_sse(await resp.content.readuntil(b"\n\n"))
                    assert first[0]["type"] == "chat"
                    resp.close()  # drops the connection with the rest of the answer unread
                await until_logged(log_path, "went away", 3)  # its next writes met closed sockets
                async with http.post(url, json=request_body("chat", msg="Hello")) as resp:
                    assert resp.status == 200
                    events = parse_sse(await resp.read())
            assert events[-1] == {"event": "message_end", "session_id": SID}
            assert "Hello" in " ".join(answers(events))
        finally:
            code = await stop(proc)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert code == 0, log
    assert "Traceback" not in log, log
    assert not [line for line in log.splitlines() if "ERROR" in line], log
    # Noticed, at information level: the test did cut answers mid-stream.
    gone = [line for line in log.splitlines() if "went away" in line]
    assert len(gone) == 3, log
    assert all(" INFO " in line for line in gone), log


def test_token_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSINESS_TOKEN", "from-env")
    monkeypatch.setenv("BUSINESS_SIGNING_SECRET", "secret-from-env")
    args = parse_args([])
    assert (args.host, args.port, args.token) == ("127.0.0.1", 8090, "from-env")
    assert args.signing_secret == "secret-from-env"
    assert parse_args(["--token", "cli"]).token == "cli"
    assert parse_args(["--signing-secret", "cli"]).signing_secret == "cli"


def test_imports_only_stdlib_aiohttp_and_orjson() -> None:
    tree = ast.parse(Path(business_service.__file__).read_text())
    roots = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert roots - set(sys.stdlib_module_names) == {"aiohttp", "orjson"}


VOLUME_TOOLS = [{"name": "self.audio_speaker.set_volume", "description": "", "inputSchema": {}}]


@pytest.mark.parametrize(
    ("msg", "call_id", "volume"),
    [
        ("Louder please", "volume-80-en", 80),
        ("大声一点", "volume-80-zh", 80),
        ("quieter", "volume-30-en", 30),
    ],
)
async def test_volume_phrase_with_the_tool_is_a_tool_call(
    aiohttp_client: AiohttpClient, msg: str, call_id: str, volume: int
) -> None:
    events = await post(aiohttp_client, request_body("chat", msg=msg, tools=VOLUME_TOOLS))
    assert events[0] == {
        "event": "message",
        "session_id": SID,
        "type": "tool_call",
        "details": {
            "call_id": call_id,
            "name": "self.audio_speaker.set_volume",
            "arguments": {"volume": volume},
        },
    }
    assert events[1] == {"event": "message_end", "session_id": SID}


async def test_volume_phrase_without_the_tool_is_an_ordinary_chat(
    aiohttp_client: AiohttpClient,
) -> None:
    tools: Any
    for tools in ([], None, "x"):
        events = await post(aiohttp_client, request_body("chat", msg="louder", tools=tools))
        assert [e["type"] for e in events[:-1]] == ["chat", "chat"]


@pytest.mark.parametrize(
    ("details", "answer"),
    [
        ({"call_id": "volume-80-en", "result": {}}, "Done, the volume is now 80."),
        ({"call_id": "volume-30-zh", "result": {}}, "好的，音量已调到 30。"),
        ({"call_id": "c1", "result": {}}, "Done."),
        (
            {"call_id": "volume-80-en", "error": {"code": "timeout", "message": "too slow"}},
            "The device could not do it: too slow.",
        ),
    ],
)
async def test_tool_result_is_spoken(
    aiohttp_client: AiohttpClient, details: dict[str, Any], answer: str
) -> None:
    events = await post(aiohttp_client, request_body("tool_result", name="self.x", **details))
    assert events[0]["type"] == "chat"
    assert events[0]["details"]["answer"] == answer
    assert events[-1]["event"] == "message_end"


async def test_mcp_notification_answers_only_message_end(aiohttp_client: AiohttpClient) -> None:
    events = await post(aiohttp_client, request_body("mcp_notification", payload={}))
    assert events == [{"event": "message_end", "session_id": SID}]
