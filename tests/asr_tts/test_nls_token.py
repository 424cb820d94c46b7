"""The Aliyun NLS token flow: the POP signature against Aliyun's published example, and the
token cache against a fake CreateToken that recomputes every signature."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from asr_tts.nls_token import (
    NLSTokens,
    TokenError,
    canonical_query,
    create_token_params,
    percent_encode,
    pop_signature,
    string_to_sign,
)
from tests.asr_tts.fake_aliyun_nls import TOKEN_PATH, FakeNLS

# Aliyun's worked example of the RPC signature (DescribeRegions, AccessKey testid/testsecret).
EXAMPLE = {
    "Timestamp": "2016-02-23T12:46:24Z",
    "Format": "XML",
    "AccessKeyId": "testid",
    "Action": "DescribeRegions",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
    "Version": "2014-05-26",
    "SignatureVersion": "1.0",
}
EXAMPLE_STRING_TO_SIGN = (
    "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
    "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
    "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
)


def test_signature_matches_aliyuns_published_example() -> None:
    assert string_to_sign(EXAMPLE) == EXAMPLE_STRING_TO_SIGN
    assert pop_signature(EXAMPLE, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_percent_encoding_follows_the_pop_rules() -> None:
    assert percent_encode("a b*c~d-_.") == "a%20b%2Ac~d-_."
    assert percent_encode("/+=&") == "%2F%2B%3D%26"
    assert percent_encode("语") == "%E8%AF%AD"  # UTF-8, upper-case hex
    assert canonical_query({"b": "2", "B": "1", "a": "x y"}) == "B=1&a=x%20y&b=2"


def test_create_token_parameters() -> None:
    params = create_token_params("id", now=1555572751.9, nonce="n-1")
    assert params == {
        "AccessKeyId": "id",
        "Action": "CreateToken",
        "Version": "2019-02-28",
        "Format": "JSON",
        "RegionId": "cn-shanghai",
        "Timestamp": "2019-04-18T07:32:31Z",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": "n-1",
    }


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


Make = Callable[..., NLSTokens]


@pytest.fixture
def fake() -> FakeNLS:
    return FakeNLS()


@pytest.fixture
async def make(aiohttp_server: AiohttpServer, fake: FakeNLS) -> AsyncIterator[Make]:
    """Token sources pointed at the fake, with its AccessKey unless told otherwise."""
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:

        def tokens(**overrides: Any) -> NLSTokens:
            params: dict[str, Any] = {
                "access_key_id": fake.access_key_id,
                "access_key_secret": fake.access_key_secret,
                "url": str(server.make_url(TOKEN_PATH)),
                "timeout_s": 5.0,
            }
            return NLSTokens(session=session, **(params | overrides))

        yield tokens


async def test_a_token_is_fetched_once_and_shared(make: Make, fake: FakeNLS) -> None:
    tokens = make()
    got = await asyncio.gather(*(tokens.get() for _ in range(5)))
    assert await tokens.get() == got[0]
    assert set(got) == set(fake.tokens)
    assert fake.token_requests == 1  # one fetch for the concurrent callers, none after
    assert fake.problems == []


async def test_the_token_is_refreshed_before_it_expires(make: Make, fake: FakeNLS) -> None:
    clock = Clock()
    tokens = make(clock=clock, refresh_before_s=600)
    first = await tokens.get()
    clock.now += fake.token_ttl_s - 601  # still 601 s left: kept
    assert await tokens.get() == first
    clock.now += 2  # 599 s left: a new one
    second = await tokens.get()
    assert second != first
    assert fake.token_requests == 2
    assert fake.problems == []  # a fresh nonce and a valid signature each time


async def test_a_short_lived_token_is_kept_for_half_its_life(make: Make, fake: FakeNLS) -> None:
    fake.token_ttl_s = 300  # less than twice refresh_before_s
    clock = Clock()
    tokens = make(clock=clock, refresh_before_s=600)
    first = await tokens.get()
    clock.now += 140
    assert await tokens.get() == first
    assert fake.token_requests == 1
    clock.now += 20  # past half of its 300 s
    assert await tokens.get() != first


async def test_an_invalidated_token_is_replaced(make: Make, fake: FakeNLS) -> None:
    tokens = make()
    first = await tokens.get()
    tokens.invalidate("some-other-token")
    assert await tokens.get() == first
    tokens.invalidate(first)
    assert await tokens.get() != first


async def test_a_failed_fetch_reaches_every_waiter_and_is_forgotten(
    make: Make, fake: FakeNLS
) -> None:
    fake.mode = "token_down"
    tokens = make()
    results = await asyncio.gather(tokens.get(), tokens.get(), return_exceptions=True)
    assert all(isinstance(r, TokenError) for r in results)
    assert "HTTP 503 ServiceUnavailable" in str(results[0])
    assert fake.token_requests == 1
    fake.mode = "ok"
    assert await tokens.get() in fake.tokens  # the failure did not stick


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"access_key_id": "LTAI-unknown"}, "HTTP 404 InvalidAccessKeyId.NotFound"),
        ({"access_key_secret": "wrong-secret"}, "HTTP 400 SignatureDoesNotMatch"),
    ],
)
async def test_refused_credentials_are_errors_without_the_secret(
    make: Make, overrides: dict[str, str], match: str
) -> None:
    with pytest.raises(TokenError, match=match) as info:
        await make(**overrides).get()
    assert "secret" not in str(info.value)
    assert info.value.reason == "auth"


async def test_unreachable_or_slow_token_service_is_an_error(make: Make) -> None:
    with pytest.raises(TokenError, match="CreateToken: Client") as info:
        await make(url="http://127.0.0.1:9/").get()
    assert info.value.reason == "connection"
    async with aiohttp.ClientSession() as session:
        # An address that never answers the TCP handshake is not portable; a silent server is.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        slow = NLSTokens(
            access_key_id="a",
            access_key_secret="b",
            session=session,
            url=f"http://127.0.0.1:{port}/",
            timeout_s=0.2,
        )
        with pytest.raises(TokenError, match=r"no answer within 0\.2 s") as info:
            await slow.get()
        assert info.value.reason == "timeout"
        server.close()
