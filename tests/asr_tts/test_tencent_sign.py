"""Tencent Cloud's signatures against the example vectors Tencent publishes.

TC3-HMAC-SHA256: the "Signature v3" page of the API 3.0 documentation signs a CVM
DescribeInstances POST at 1551113065 and prints every intermediate value. Its current revision
uses SecretKey "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE" (signature 72e494ea…); an earlier revision,
still copied in many SDK tests, masks the key as "Gu5t9xGARNpq86cd98joQYCN3*******" (signature
2230eefd…). Both are checked, each from the same canonical request.

ASR handshake: the real-time ASR (WebSocket) page signs its example URL with SecretKey
"*****SkqpeHgqmSz*****" and prints G8jDQBRg1JfeBi/YnTjyjekxfDA=.
"""

from __future__ import annotations

import pytest

from asr_tts.tencent_sign import (
    asr_query,
    asr_sign_text,
    asr_signature,
    tc3_authorization,
    tc3_canonical_request,
    tc3_signature,
    tc3_string_to_sign,
    utc_date,
)

PAYLOAD = (
    b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
)
CONTENT_TYPE = "application/json; charset=utf-8"
HOST = "cvm.tencentcloudapi.com"
TIMESTAMP = 1551113065
CANONICAL_REQUEST = (
    "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n"
    "content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
)
STRING_TO_SIGN = (
    "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
    "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
)


def test_tc3_canonical_request_and_string_to_sign_are_the_documented_ones() -> None:
    assert tc3_canonical_request(CONTENT_TYPE, HOST, PAYLOAD) == CANONICAL_REQUEST
    assert tc3_string_to_sign(CANONICAL_REQUEST, "cvm", TIMESTAMP) == STRING_TO_SIGN


def test_the_date_is_the_utc_day_not_the_local_one() -> None:
    # The page's warning: 1551113065 is 2019-02-26 00:44:25 in UTC+8, but the scope says 25.
    assert utc_date(TIMESTAMP) == "2019-02-25"


@pytest.mark.parametrize(
    ("secret_key", "signature"),
    [
        (
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168",
        ),
        (
            "Gu5t9xGARNpq86cd98joQYCN3*******",
            "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c",
        ),
    ],
)
def test_tc3_signature_is_the_published_one(secret_key: str, signature: str) -> None:
    assert tc3_signature(secret_key, "cvm", TIMESTAMP, STRING_TO_SIGN) == signature


def test_tc3_authorization_is_the_published_header() -> None:
    secret_id = "AKID**********************0123456789EXAMPLE"
    assert tc3_authorization(
        secret_id=secret_id,
        secret_key="Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        service="cvm",
        host=HOST,
        content_type=CONTENT_TYPE,
        payload=PAYLOAD,
        timestamp=TIMESTAMP,
    ) == (
        "TC3-HMAC-SHA256 Credential=AKID**********************0123456789EXAMPLE/2019-02-25/cvm/"
        "tc3_request, SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )


ASR_PARAMS = {
    "voice_id": "c64385ee-3e5c-4fc5-bbfd-7c71addb35b0",
    "timestamp": "1673408372",
    "secretid": "*****Qq1zhZMN8dv0******",
    "nonce": "1673408372",
    "needvad": "1",
    "expired": "1673494772",
    "engine_model_type": "16k_zh",
    "voice_format": "1",
}


def test_asr_signature_is_the_published_one() -> None:
    text = asr_sign_text("asr.cloud.tencent.com/asr/v2/125922***", ASR_PARAMS)
    assert text == (
        "asr.cloud.tencent.com/asr/v2/125922***?engine_model_type=16k_zh&expired=1673494772"
        "&needvad=1&nonce=1673408372&secretid=*****Qq1zhZMN8dv0******&timestamp=1673408372"
        "&voice_format=1&voice_id=c64385ee-3e5c-4fc5-bbfd-7c71addb35b0"
    )
    assert asr_signature("*****SkqpeHgqmSz*****", text) == "G8jDQBRg1JfeBi/YnTjyjekxfDA="


def test_asr_query_url_encodes_the_signature_last() -> None:
    query = asr_query({"b": "2", "a": "1"}, "Hep+dT/X6u=")
    assert query == "a=1&b=2&signature=Hep%2BdT%2FX6u%3D"
