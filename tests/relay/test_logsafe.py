"""Log injection: what a peer chose reaches a log line escaped, one record per line
(relay/logsafe.py)."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import aiohttp
import orjson
import pytest

from relay.logs import formatter, story
from relay.logsafe import OneLineFormatter, printable
from tests.relay.conftest import RelayFactory
from tests.relay.test_cli import LIGHT_SPEECH, spawn_relay, stop, wait_http
from tests.relay.test_simulate import closed_port

FORGED = "evil\n2030-01-01 00:00:00,000 ERROR relay: forged\r\x1b[2J\u2028x\x85y"
ESCAPED = "evil\\n2030-01-01 00:00:00,000 ERROR relay: forged\\r\\x1b[2J\\u2028x\\x85y"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("669C4BDA13EA", "669C4BDA13EA"),
        ("小智 é 🙂", "小智 é 🙂"),  # printable non-ASCII text is kept
        (FORGED, ESCAPED),
        ("a\tb\x00c\x7fd", "a\\tb\\x00c\\x7fd"),
        ("\U000e0001", "\\U000e0001"),  # a non-printable beyond the BMP
        (ValueError("bad\nthing"), "bad\\nthing"),
    ],
)
def test_printable(value: Any, expected: str) -> None:
    assert printable(value) == expected
    assert printable(printable(value)) == expected  # escaping twice changes nothing


def test_formatter_keeps_a_record_on_its_line_and_indents_its_traceback() -> None:
    fmt = OneLineFormatter("%(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError("peer said\nERROR relay: forged")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "relay.x", logging.ERROR, __file__, 1, "[%s] failed", (FORGED,), exc_info
    )
    record.stack_info = "Stack (most recent call last):\n  frame"
    lines = fmt.format(record).split("\n")
    assert lines[0] == f"ERROR relay.x: [{ESCAPED}] failed"
    assert len(lines) > 3
    assert all(line.startswith("  ") for line in lines[1:])  # nothing else at the margin
    assert "  ValueError: peer said" in lines
    assert "  ERROR relay: forged" in lines  # the exception's own newline, indented


async def test_peer_chosen_values_are_escaped_in_the_relays_log(
    make_relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")
    client = await make_relay()
    query = {"device-id": FORGED, "client-id": FORGED}
    hello: dict[str, Any] = {"type": "hello", "device_id": FORGED, "token": FORGED}
    hello["transport"] = FORGED
    hello["features"] = {"mcp": True}  # its MCP notifications are logged with its id (§3.1)
    first = await client.ws_connect("/xiaozhi/v1/", params=query)
    await first.send_str(orjson.dumps(hello).decode())
    assert orjson.loads((await first.receive(timeout=5)).data)["type"] == "hello"
    await first.send_str(orjson.dumps(hello).decode())  # a repeated hello is logged with the id
    note = {"jsonrpc": "2.0", "method": FORGED}
    await first.send_str(orjson.dumps({"type": "mcp", "payload": note}).decode())
    second = await client.ws_connect("/xiaozhi/v1/", params=query)  # replaces the first
    await second.send_str(orjson.dumps(hello).decode())
    assert orjson.loads((await second.receive(timeout=5)).data)["type"] == "hello"
    while (msg := await first.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
        assert orjson.loads(msg.data)["type"] == "mcp"  # the relay's MCP set-up
    assert msg.type == aiohttp.WSMsgType.CLOSE
    await second.close()

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    about = [line for line in lines if "forged" in line]
    assert len(about) >= 3, lines  # repeated hello, mcp, replacing
    for line in about:
        assert not re.search(r"[\n\r\x1b\u2028\x85]", line), line
        assert ESCAPED[:20] in line


async def test_relay_serve_writes_one_line_per_record() -> None:
    port = closed_port()
    relay = await spawn_relay(port, env=LIGHT_SPEECH)  # the log is under test, not speech
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"{base}/healthz", relay)
            for _ in range(2):  # the second connection replaces the first: a logged line
                ws = await http.ws_connect(f"{base}/xiaozhi/v1/", params={"device-id": FORGED})
                await ws.send_str('{"type":"hello"}')
                await ws.receive(timeout=5)
            await ws.close()
    finally:
        code = await stop(relay)
    assert code == 0
    assert relay.stderr is not None
    err = (await relay.stderr.read()).decode()
    records = err.splitlines()
    # Connect, replacing, close: each names the device, escaped.
    assert [line for line in records if "forged" in line] == [
        line for line in records if ESCAPED in line
    ]
    assert any("replacing previous connection" in line for line in records if ESCAPED in line)
    assert sum(" connect device=" in line for line in records if ESCAPED in line) == 2
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    assert all(stamp.match(line) or line.startswith("  ") for line in records), err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_time_stamp_is_the_stdlib_default_across_seconds(fmt: str) -> None:
    # Built once a second: records within a second, across a second and back must each get
    # exactly what logging.Formatter writes by default.
    ours, stdlib = formatter(fmt), logging.Formatter()
    for created in (1700000000.0, 1700000000.999, 1700000001.0005, 1700000000.5, 1.25):
        record = logging.makeLogRecord({"msg": "m", "created": created})
        record.msecs = (created - int(created)) * 1000
        assert ours.formatTime(record) == stdlib.formatTime(record)
    assert ours.formatTime(record, "%H") == stdlib.formatTime(record, "%H")


def test_a_story_field_must_not_replace_the_records_own() -> None:
    with pytest.raises(KeyError):
        story(logging.getLogger("relay.test"), "oops", level=logging.CRITICAL, msg="x")
