"""Error and close codes shared by both wires (docs/protocol.md §1.5, §1.7, §2.6)."""

from __future__ import annotations

import pytest

from protocol.codes import MESSAGES, BusinessError, CloseCode, DeviceError, ProtocolError


def test_close_codes() -> None:
    assert {code.name: code.value for code in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "POLICY": 1008,
        "TOO_BIG": 1009,
        "INTERNAL": 1011,
        "OVER_CAPACITY": 1013,
        "NO_HELLO": 4000,
        "REPLACED": 4001,
    }


@pytest.mark.parametrize("code", [*DeviceError, *BusinessError])
def test_every_code_has_a_message(code: DeviceError | BusinessError) -> None:
    assert MESSAGES[code]
    assert MESSAGES[code.value] == MESSAGES[code]


def test_messages_cover_exactly_the_codes() -> None:
    assert set(MESSAGES) == {*DeviceError, *BusinessError}


def test_business_codes_are_prefixed() -> None:
    assert all(code.value.startswith("business_") for code in BusinessError)


def test_protocol_error_with_detail() -> None:
    exc = ProtocolError(DeviceError.INVALID_FIELD, "mode")
    assert (exc.code, exc.detail, str(exc)) == (
        DeviceError.INVALID_FIELD,
        "mode",
        "invalid_field: mode",
    )


def test_protocol_error_without_detail() -> None:
    exc = ProtocolError(DeviceError.BAD_JSON)
    assert (exc.code, exc.detail, str(exc)) == (DeviceError.BAD_JSON, "", "bad_json")
