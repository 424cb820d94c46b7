"""A cloud voice for the capacity benchmarks: the fake DashScope inference WebSocket of
tests/asr_tts/fake_dashscope.py (CosyVoice synthesis, a tone per text), served on its own
in a child process, so that its work is neither the relay's nor the load generator's.

    python -m bench._fake_tts --port P [--pace 0.2]

`--pace` is the seconds of synthesis per second of audio the fake takes (a cloud service's
pace). What the fake records for the tests is cleared every second (a benchmark sends
thousands of answers), and its tones are made once per length.
"""

from __future__ import annotations

import argparse
import asyncio
import functools

from aiohttp import web

from tests.asr_tts import fake_dashscope
from tests.asr_tts.fake_dashscope import FakeDashScope

API_KEY = FakeDashScope.api_key
# A tone is made sample by sample in Python: once per (length, rate), not once per answer.
fake_dashscope.tone = functools.cache(fake_dashscope.tone)


async def forget(fake: FakeDashScope) -> None:
    """Clear what the fake keeps for the tests' assertions, every second."""
    while True:
        await asyncio.sleep(1)
        fake.runs.clear()
        fake.texts.clear()
        fake.sent_audio.clear()
        fake.stamps.clear()
        fake.problems.clear()


async def serve(port: int, pace: float) -> None:
    """Serve the fake on 127.0.0.1:`port` until killed."""
    fake = FakeDashScope(pace=pace)
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await forget(fake)


def main() -> None:
    """Parse the options and serve."""
    p = argparse.ArgumentParser(prog="python -m bench._fake_tts", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pace", type=float, default=0.2)
    args = p.parse_args()
    asyncio.run(serve(args.port, args.pace))


if __name__ == "__main__":
    main()
