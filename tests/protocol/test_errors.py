"""Every error code and the one mapping from a failure to what a peer is told."""

from __future__ import annotations

from typing import get_args

import pytest

from protocol.errors import (
    HTTP,
    MESSAGES,
    ApiError,
    BusinessError,
    BusinessOutcome,
    CloseCode,
    DeviceError,
    ProtocolError,
    Refusal,
    api_error_body,
    business_error,
)
from protocol.node import PushReason


def test_close_codes() -> None:
    assert {code.name: code.value for code in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
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


def test_every_api_error_has_a_status_and_a_hint_table_entry() -> None:
    assert set(HTTP) == set(ApiError)
    assert all(400 <= status < 600 for status, _ in HTTP.values())


def test_api_error_body_takes_the_codes_hint_unless_given() -> None:
    assert api_error_body(ApiError.OFFLINE, "gone") == (
        404,
        {
            "error": "gone",
            "errorType": "offline",
            "hint": "the device is not connected to any relay",
        },
    )
    assert api_error_body(ApiError.BAD_REQUEST, "no", "try this")[1]["hint"] == "try this"
    assert api_error_body(ApiError.TOO_LARGE, "big", "")[1]["hint"] == ""


def test_a_refusal_answers_with_its_code_unless_a_status_is_given() -> None:
    plain = Refusal(ApiError.DEVICE_NOT_ALLOWED, "not you")
    assert str(plain) == "not you"
    assert plain.answer() == (403, api_error_body(ApiError.DEVICE_NOT_ALLOWED, "not you")[1])
    assert Refusal(ApiError.DEVICE_NOT_ALLOWED, "not you", status=401).answer()[0] == 401
    assert Refusal(ApiError.BAD_JSON, "x", "send JSON").answer()[1]["hint"] == "send JSON"


def test_every_push_reason_is_an_api_error() -> None:
    assert {ApiError(r) for r in get_args(PushReason)} <= set(ApiError)


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (BusinessOutcome.UNREACHABLE, BusinessError.UNREACHABLE),
        (BusinessOutcome.STATUS, BusinessError.STATUS),
        (BusinessOutcome.CONTENT_TYPE, BusinessError.CONTENT_TYPE),
        (BusinessOutcome.TIMEOUT, BusinessError.TIMEOUT),
        (BusinessOutcome.INCOMPLETE, BusinessError.INCOMPLETE),  # §2.7: never a silent end
        (BusinessOutcome.OK, None),
        (BusinessOutcome.CANCELLED, None),
    ],
)
def test_business_outcome_to_the_error_a_device_is_told(
    outcome: BusinessOutcome, code: BusinessError | None
) -> None:
    assert business_error(outcome) == code
