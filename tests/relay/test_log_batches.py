"""The relay's log written in batches (relay/logwriter.py): lines wait for the event loop's
next flush and go out in order in one write; a WARNING, a line outside the loop and the
exit write at once; the lines read as they did when each was written alone; a relay
stopped with SIGTERM has written every turn."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import weakref
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from relay import logs
from relay.logs import formatter, renderer, story
from relay.logwriter import BATCH_LINES, BatchWriter, Queued
from tests.relay.fakes import FakeBusiness
from tests.relay.test_cli import LIGHT_SPEECH, spawn_relay, stop, wait_http
from tests.relay.test_simulate import closed_port

log = logging.getLogger("relay.test")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class Stream(io.StringIO):
    """A text stream that keeps each `write` apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


class Records(logging.Handler):
    """The records as the logging module hands them over (the path without the writer)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def alone(handler: logging.Handler, writer: BatchWriter | None = None) -> Iterator[None]:
    """`handler` the root logger's only one, at INFO, as `relay serve` configures it (no
    caplog beside it), `writer` the one `story` queues to; all restored after. Within one
    test phase: pytest adds and removes its own handlers around each phase."""
    root = logging.getLogger()
    saved = root.handlers, root.level, logs._writer
    root.handlers, logs._writer = [handler], writer
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers, logs._writer = saved[0], saved[2]
        root.setLevel(saved[1])


def batch_writer(fmt: str) -> tuple[BatchWriter, Stream]:
    stream = Stream()
    line_format = formatter(fmt)
    writer = BatchWriter(stream, renderer(line_format))
    writer.setFormatter(line_format)
    return writer, stream


def turns(n: int) -> None:
    for i in range(n):
        story(log, "turn", device=f"d-{i:04d}", kind="report", text="a\nb", status=200)
        if i == n // 2:
            log.info("a plain %s line", "library")  # not a story line: queued in its place


def unstamped(line: str, fmt: str) -> str | list[tuple[str, Any]]:
    """A line without its time stamp, the only part that differs between two writes; a
    JSON line as its members in order."""
    if fmt == "text":
        assert STAMP.match(line), line
        return STAMP.sub("", line)
    obj: dict[str, Any] = json.loads(line)
    assert STAMP.match(obj.pop("time") + " ")
    return list(obj.items())


def unbatched(fmt: str, n: int) -> list[str]:
    """What `turns(n)` wrote when each record was formatted as it was logged."""
    records = Records()
    with alone(records):
        turns(n)
    return [formatter(fmt).format(r) for r in records.records]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_lines_wait_for_the_flush_and_go_out_in_order_in_one_write(fmt: str) -> None:
    writer, stream = batch_writer(fmt)
    with alone(writer, writer):
        turns(300)
        assert stream.writes == []  # queued: the loop has not run since
        async with asyncio.timeout(10):
            while not stream.writes:
                await asyncio.sleep(0.01)
    [written] = stream.writes
    expected = unbatched(fmt, 300)
    assert len(expected) == 301
    assert [unstamped(line, fmt) for line in written.splitlines()] == [
        unstamped(line, fmt) for line in expected
    ]
    first = unstamped(written.splitlines()[0], fmt)
    escaped = "a\\nb"  # the newline a peer sent, escaped in both formats
    if isinstance(first, str):
        assert f" text={escaped} " in first
    else:
        assert ("text", escaped) in first


async def test_a_warning_writes_the_batch_at_once_after_the_lines_before_it() -> None:
    writer, stream = batch_writer("text")
    with alone(writer, writer):
        turns(3)
        story(log, "business_failed", logging.WARNING, business="b", status=500)
        assert len(stream.writes) == 1  # at once, no loop turn between
    lines = stream.lines()
    events = [line.split(" ")[4] for line in lines]
    assert events == ["turn", "turn", "a", "turn", "business_failed"]
    assert " WARNING relay.test: business_failed business=b status=500" in lines[-1]


def test_a_line_outside_the_event_loop_is_written_at_once() -> None:
    writer, stream = batch_writer("json")
    with alone(writer, writer):
        story(log, "connect", device="d-1")
        assert len(stream.writes) == 1
    assert json.loads(stream.getvalue())["device"] == "d-1"


async def test_a_line_from_another_thread_is_written_at_once() -> None:
    writer, stream = batch_writer("text")
    with alone(writer, writer):
        turns(2)  # queued in the loop
        await asyncio.to_thread(story, log, "push", device="d-t")
        assert len(stream.writes) == 1  # with the lines before it, in order
    assert [line.split(" ")[4] for line in stream.lines()] == ["turn", "turn", "a", "push"]


def test_a_line_that_cannot_be_written_is_reported_and_the_others_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = Stream()
    good = renderer(formatter("text"))

    def render(entry: Queued) -> str:
        if entry[3] == "bad":
            raise ValueError("cannot")
        return good(entry)

    writer = BatchWriter(stream, render)
    writer.setFormatter(formatter("text"))
    with alone(writer, writer):
        story(log, "bad", device="d-1")
        story(log, "good", device="d-2")
    assert [line.split(" ")[4] for line in stream.lines()] == ["good"]
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err
    assert "ValueError: cannot" in err


async def test_queued_lines_are_written_at_exit_and_a_full_batch_at_once() -> None:
    writer, stream = batch_writer("text")
    with alone(writer, writer):
        turns(BATCH_LINES - 1)  # with the plain line: a full batch
        assert len(stream.writes) == 1
        turns(10)
        assert len(stream.writes) == 1
        logging.shutdown([weakref.ref(writer)])  # what runs at exit
    assert len(stream.writes) == 2
    assert len(stream.lines()) == BATCH_LINES + 11


async def test_caplog_beside_the_writer_gets_every_story_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer, stream = batch_writer("text")
    root = logging.getLogger()
    with alone(writer, writer):
        root.addHandler(caplog.handler)  # another handler: story hands records to both
        turns(2)
        writer.flush()
    assert [r.getMessage() for r in caplog.records if r.name == log.name][0].startswith("turn ")
    assert len(stream.lines()) == 3


async def test_a_relay_stopped_with_sigterm_has_written_every_turn() -> None:
    business = TestServer(FakeBusiness().app(), host="127.0.0.1")
    await business.start_server()
    port = closed_port()
    env = {
        "RELAY__BUSINESS__0__URL": str(business.make_url("/chat")),
        "RELAY__LOG__FORMAT": "json",
        **LIGHT_SPEECH,
    }
    relay = await spawn_relay(port, env=env)
    base = f"http://127.0.0.1:{port}"
    devices = [f"d-{i:02d}" for i in range(30)]
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"{base}/healthz", relay)
            for device in devices:
                custom = {"type": "report", "details": {"session_id": device}}
                body = {"device_id": device, "custom": custom}
                async with asyncio.timeout(15):
                    resp = await http.post(f"{base}/api/v1/simulate", json=body)
                    assert resp.status == 200
                    await resp.read()
    finally:
        code = await stop(relay)  # at once: the last lines are still queued
        await business.close()
    assert relay.stderr is not None
    lines = (await relay.stderr.read()).decode().splitlines()
    assert code == 0, lines[-20:]
    objs = [json.loads(line) for line in lines]  # every line one JSON object
    turned = [o for o in objs if o["message"].startswith("turn ")]
    assert [o["device"] for o in turned] == devices
    assert all(o["outcome"] == "ok" and o["kind"] == "report" for o in turned)
    assert "relay stopped" in [o["message"] for o in objs]
