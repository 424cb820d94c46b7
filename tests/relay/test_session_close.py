"""A session closed right after a turn was asked for: the turn's work never starts, and no
coroutine is left un-awaited (a chat task cancelled before its first step used to leave
"coroutine ... was never awaited" in the log about once per 20k connect/disconnect cycles)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from protocol.device import Listen
from relay.device.connection import DEVICE_ROOM
from relay.device.session import Session
from tests.relay.conftest import RelayFactory
from tests.relay.fakes import Device, FakeBusiness


def start_speak(session: Session) -> None:
    session.handle(Listen(state="detect", text_response="hello there"))


def start_chat(session: Session) -> None:
    session.chat("hello")


def start_typed(session: Session) -> None:
    session.handle(Listen(state="detect", text="what time is it"))


def start_two(session: Session) -> None:
    session.chat("first")
    session.chat("second")  # waits on the first before it starts


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("start", [start_speak, start_chat, start_typed, start_two])
async def test_close_right_after_a_turn_starts_leaves_no_unawaited_coroutine(
    make_relay: RelayFactory, fake: FakeBusiness, start: Callable[[Session], None]
) -> None:
    client = await make_relay()
    dev = await Device.connect(client)
    conn = client.app[DEVICE_ROOM].connections.get("669C4BDA13EA")
    assert conn is not None
    session = conn.session
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start(session)
        await session.close()  # in the same step: the turn's task never ran
        gc.collect()
    never: list[Any] = [w for w in caught if "never awaited" in str(w.message)]
    assert never == []
    assert fake.bodies == []  # and nothing reached the business
    await dev.ws.close()
