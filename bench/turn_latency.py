"""Turn latency with embedded ASR/TTS and the reference business, and the relay's own share.

The relay (`python -m relay serve --config config.toml`, pocketsphinx restricted to a small
command grammar through RELAY__ASR__GRAMMAR_WORDS) and the reference business run as
subprocesses. A device client speaks espeak-ng commands over the WebSocket in auto mode:
Opus, 16 kHz, 60 ms packets sent in real time, silence before and after, and measures, from
the moment it sent the last packet holding speech (end of speech):

    -> stt,  -> tts start,  -> first audio frame.

Each turn runs on a fresh connection, so the relay's decoder and VAD start from the state the
benchmark replays offline: the same packets through the same UplinkDecoder, VadStream and
Segmenter tell which packet completes the VAD window that ends the utterance. The compute
parts of every turn come from the relay's own /metrics, scraped between turns (one
observation per turn): relay_asr_seconds (ASR), relay_business_first_event_seconds (business
first byte), relay_speech_end_to_first_audio_seconds (the relay's own end-of-speech clock);
relay_tts_seconds is scraped the moment the first frame arrives, when only the first
segment has been synthesised. Then

    overhead (VAD-exact, the goal) = total - VAD decision delay - ASR - business - TTS(first)
    overhead (nominal)             = total - min_silence_s - ASR - business - TTS(first)

where the VAD decision delay is the audio time from the end of speech to the packet that
completes the deciding window. Baselines in the same run: the same ASR and TTS calls made
directly in this process, and the business's first event over a direct POST.

    python -m bench.turn_latency [--turns 24] [--tts-cache-mb 0]

stdout: one JSON document; stderr: progress, then a table. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from asr_tts.asr.pocketsphinx import PocketsphinxASR
from asr_tts.codec import FrameEncoder
from asr_tts.segmenter import Segmenter, SegmenterConfig, SegmentEvent
from asr_tts.tts.base import Voice
from asr_tts.tts.espeak import EmbeddedTTS
from asr_tts.tts.sentences import clean_for_speech, split_sentences
from asr_tts.uplink import UplinkDecoder
from asr_tts.vad import SileroModel, VadStream
from bench._cli import at_least_one, goal_lines, parser, run_main
from bench._common import children, envelope, median, percentile, progress, r
from bench._devices import voice_hello
from bench._peers import device_url, relay_env, start_business, start_relay
from bench._sched import process_sched
from bench._speech import FRAME_S, espeak, opus_packets, silence, trim
from protocol.audio_format import AudioFormat

GOAL_OVERHEAD_P99_MS = 30.0
PHRASES = ("turn on the light", "turn off the light", "what time is it", "dance", "stop")
LEAD_S = 0.6  # silence before the speech
TAIL_S = 4.0  # silence after it, sent until stt arrives
FIRST_SEGMENT_CHARS = 24  # config.toml [tts] first_segment_chars
HELLO = voice_hello()
METRICS = {
    "asr": "relay_asr_seconds",
    "tts": "relay_tts_seconds",
    "encode": "relay_tts_encode_seconds",
    "business_first": "relay_business_first_event_seconds",
    "speech_to_audio": "relay_speech_end_to_first_audio_seconds",
}


@dataclass
class Utterance:
    """One phrase as the device sends it, and what the relay's VAD will make of it."""

    phrase: str
    packets: list[bytes]
    last_speech: int  # index of the last packet holding speech
    trigger: int  # index of the packet that completes the window ending the utterance
    utterance_pcm: bytes  # what the relay hands to ASR (pre-roll and speech windows)


def prepare(phrase: str, model: SileroModel, seg: SegmenterConfig) -> Utterance:
    """Encode the phrase with silence around it and replay the relay's VAD over it."""
    speech = trim(espeak(phrase))
    lead = silence(LEAD_S)
    pcm = lead + speech + silence(TAIL_S)
    packets = opus_packets(pcm)
    last_speech = (len(lead) + len(speech) - 1) // (2 * 960)
    decoder, vad, segmenter = UplinkDecoder(AudioFormat()), VadStream(model), Segmenter(seg)
    decoded = bytearray()
    start_window = trigger = -1
    window = 0
    for k, packet in enumerate(packets):
        chunk = decoder.decode(packet)
        decoded += chunk
        for prob in vad.process(chunk):
            event = segmenter.process(VadStream.WINDOW_S, prob)
            if event is SegmentEvent.SPEECH_START and start_window < 0:
                start_window = window
            elif event is SegmentEvent.SPEECH_END and start_window >= 0:
                trigger = k
            window += 1
        if trigger >= 0:
            wb = VadStream.WINDOW_SAMPLES * 2
            ring = round((seg.pre_roll_s + seg.min_speech_s) / VadStream.WINDOW_S) + 1
            begin = max(0, start_window - ring + 1) * wb
            return Utterance(phrase, packets, last_speech, k, bytes(decoded[begin : window * wb]))
    raise RuntimeError(f"the VAD never ended {phrase!r}: no SPEECH_END in the replay")


# ---- the device --------------------------------------------------------------------------


@dataclass
class Turn:
    """What one turn's device saw, on its perf_counter clock."""

    phrase: str
    sent: list[float] = field(default_factory=list)  # per packet sent
    stt_t: float = 0.0
    stt_text: str = ""
    tts_start_t: float = 0.0
    first_audio_t: float = 0.0
    stop_t: float = 0.0
    frames: int = 0
    tts_at_first_audio: tuple[float, float] = (0.0, 0.0)  # relay_tts_seconds (count, sum)
    encode_at_first_audio: tuple[float, float] = (0.0, 0.0)  # relay_tts_encode_seconds


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, tuple[float, float]]:
    """(count, sum) of the relay's latency histograms (all label values added up)."""
    async with http.get(url) as resp:
        text = await resp.text()
    out = dict.fromkeys(METRICS, (0.0, 0.0))
    names = {v: k for k, v in METRICS.items()}
    for family in text_string_to_metric_families(text):
        key = names.get(family.name)
        if key is None:
            continue
        count = sum(s.value for s in family.samples if s.name.endswith("_count"))
        total = sum(s.value for s in family.samples if s.name.endswith("_sum"))
        out[key] = (count, total)
    return out


async def speak_turn(  # noqa: C901, PLR0915 - one timed turn, read top to bottom
    http: aiohttp.ClientSession, ws_url: str, metrics_url: str, u: Utterance, idx: int
) -> Turn:
    """Connect, hello, listen start (auto), stream the phrase in real time until stt, then
    read the answer until `tts stop`."""
    turn = Turn(u.phrase)
    got_stt = asyncio.Event()
    done = asyncio.Event()
    mac = f"02:7A:00:00:{(idx >> 8) & 255:02X}:{idx & 255:02X}"
    headers = {"Device-Id": mac, "Client-Id": f"turn-{idx}", "Protocol-Version": "1"}
    async with http.ws_connect(ws_url, headers=headers) as ws:
        await ws.send_str(HELLO.decode())
        async with asyncio.timeout(10):
            hello = orjson.loads((await ws.receive()).data)
        sid = hello["session_id"]
        await ws.send_str(
            orjson.dumps(
                {"session_id": sid, "type": "listen", "state": "start", "mode": "auto"}
            ).decode()
        )
        scrapes: list[asyncio.Task[None]] = []

        async def at_first_audio() -> None:
            m = await scrape(http, metrics_url)
            turn.tts_at_first_audio = m["tts"]
            turn.encode_at_first_audio = m["encode"]

        async def reader() -> None:
            async for msg in ws:
                now = time.perf_counter()
                if msg.type == WSMsgType.BINARY:
                    if not turn.first_audio_t:
                        turn.first_audio_t = now
                        scrapes.append(asyncio.ensure_future(at_first_audio()))
                    turn.frames += 1
                    continue
                if msg.type != WSMsgType.TEXT:
                    break
                m = orjson.loads(msg.data)
                if m.get("type") == "stt":
                    turn.stt_t, turn.stt_text = now, m.get("text", "")
                    got_stt.set()
                    if not turn.stt_text:
                        done.set()  # nothing recognised: the relay ends the turn with tts stop
                elif m.get("type") == "tts" and m.get("state") == "start":
                    turn.tts_start_t = now
                elif m.get("type") == "tts" and m.get("state") == "stop":
                    turn.stop_t = now
                    done.set()
                    break

        read_task = asyncio.ensure_future(reader())
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        try:
            async with asyncio.timeout(30):
                for k, packet in enumerate(u.packets):  # real time: one packet per 60 ms
                    await asyncio.sleep(max(0.0, t0 + k * FRAME_S - loop.time()))
                    if got_stt.is_set():
                        break
                    await ws.send_bytes(packet)
                    turn.sent.append(time.perf_counter())
                await done.wait()
        finally:
            read_task.cancel()
            await asyncio.gather(read_task, *scrapes, return_exceptions=True)
    return turn


# ---- baselines ---------------------------------------------------------------------------


async def asr_baseline(utts: list[Utterance], words: list[str], reps: int) -> dict[str, float]:
    """ASR of the very utterance audio the relay recognises, in this process (median, ms)."""
    asr = PocketsphinxASR(pool_size=1, grammar_words=words)
    try:
        out: dict[str, float] = {}
        for u in utts:
            runs = []
            for _ in range(reps + 1):
                stream = await asr.open()
                for i in range(0, len(u.utterance_pcm), 1024):
                    await stream.feed(u.utterance_pcm[i : i + 1024])
                t0 = time.perf_counter()
                await stream.finish()
                runs.append((time.perf_counter() - t0) * 1000)
            out[u.phrase] = r(median(runs[1:]), 2)  # the first run loads the decoder
        return out
    finally:
        asr.close()


async def tts_baseline(texts: list[str], reps: int) -> dict[str, dict[str, float]]:
    """espeak-ng synthesis and Opus encoding of each first segment, in this process (ms)."""
    tts = EmbeddedTTS()
    out: dict[str, dict[str, float]] = {}
    for text in texts:
        synth, enc = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            pcm = await tts.synthesize(text, Voice())
            t1 = time.perf_counter()
            FrameEncoder(AudioFormat(sample_rate=24000)).encode(pcm)
            enc.append((time.perf_counter() - t1) * 1000)
            synth.append((t1 - t0) * 1000)
        out[text] = {"synth_ms": r(median(synth), 2), "encode_ms": r(median(enc), 2)}
    return out


async def business_baseline(http: aiohttp.ClientSession, url: str, reps: int) -> float:
    """POST a chat request straight to the business: ms to its first SSE event (median)."""
    runs = []
    for k in range(reps):
        body = orjson.dumps(
            {
                "auth": {"device_id": "027A00000000"},
                "type": "chat",
                "details": {"msg": "turn on the light", "session_id": f"s{k}", "timestamp": 0},
            }
        )
        t0 = time.perf_counter()
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            async with asyncio.timeout(10):
                await resp.content.readuntil(b"\n\n")
            runs.append((time.perf_counter() - t0) * 1000)
            await resp.read()
    return r(median(runs[1:]), 3)


# ---- analysis ----------------------------------------------------------------------------


def per_turn(
    turn: Turn, u: Utterance, before: dict[str, Any], after: dict[str, Any], min_silence_s: float
) -> dict[str, Any]:
    """One turn's times (ms) and its overheads."""

    def delta(key: str) -> tuple[float, float]:
        return after[key][0] - before[key][0], (after[key][1] - before[key][1]) * 1000

    end = turn.sent[u.last_speech]
    ms = 1000.0
    asr_n, asr_ms = delta("asr")
    biz_n, biz_ms = delta("business_first")
    s2a_n, s2a_ms = delta("speech_to_audio")
    tts_n = turn.tts_at_first_audio[0] - before["tts"][0]
    tts_ms = (turn.tts_at_first_audio[1] - before["tts"][1]) * 1000
    # The first executor encode of the answer is its first frames alone (Speaker.HEAD_FRAMES);
    # the rest of the segment may be encoded by the time of the scrape, so take one job's mean.
    enc_n = turn.encode_at_first_audio[0] - before["encode"][0]
    enc_ms = (turn.encode_at_first_audio[1] - before["encode"][1]) * 1000 / max(enc_n, 1)
    total = (turn.first_audio_t - end) * ms
    vad_delay = (turn.sent[u.trigger] - end) * ms if u.trigger < len(turn.sent) else float("nan")
    compute = asr_ms + biz_ms + tts_ms
    return {
        "phrase": turn.phrase,
        "stt_text": turn.stt_text,
        "recognised": turn.stt_text == turn.phrase,
        "to_stt_ms": r((turn.stt_t - end) * ms, 2),
        "to_tts_start_ms": r((turn.tts_start_t - end) * ms, 2),
        "to_first_audio_ms": r(total, 2),
        "vad_decision_ms": r(vad_delay, 2),
        "asr_ms": r(asr_ms, 2),
        "business_first_ms": r(biz_ms, 2),
        "tts_first_ms": r(tts_ms, 2),
        "tts_observations_at_first_audio": tts_n,
        "encode_jobs_at_first_audio": enc_n,
        "encode_job_ms": r(enc_ms, 2),
        "observations": {"asr": asr_n, "business_first": biz_n, "speech_to_audio": s2a_n},
        "relay_speech_to_audio_ms": r(s2a_ms, 2),
        "overhead_goal_formula_ms": r(total - min_silence_s * ms - compute, 2),
        "overhead_vad_exact_ms": r(total - vad_delay - compute, 2),
        "overhead_relay_clock_ms": r(s2a_ms - compute, 2),
        # end of speech -> stt, less the VAD decision and ASR: the uplink path's own share
        "overhead_to_stt_ms": r((turn.stt_t - end) * ms - vad_delay - asr_ms, 2),
        "frames": turn.frames,
    }


STAT_KEYS = (
    "to_stt_ms",
    "to_tts_start_ms",
    "to_first_audio_ms",
    "vad_decision_ms",
    "asr_ms",
    "business_first_ms",
    "tts_first_ms",
    "relay_speech_to_audio_ms",
    "overhead_goal_formula_ms",
    "overhead_vad_exact_ms",
    "overhead_relay_clock_ms",
    "overhead_to_stt_ms",
    "encode_job_ms",
)


def first_segment(phrase: str) -> str:
    """The first segment the relay speaks of the reference business's answer to `phrase`."""
    answer = f'You said: "{phrase}".'  # examples/business_service.py, first chat event
    return split_sentences(clean_for_speech(answer), first_max_chars=FIRST_SEGMENT_CHARS)[0]


def stats(turns: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50 / p90 / p99 / max of every time over the complete turns."""
    out = {}
    for key in STAT_KEYS:
        values = sorted(t[key] for t in turns)
        out[key] = {
            "p50": r(percentile(values, 50), 2),
            "p90": r(percentile(values, 90), 2),
            "p99": r(percentile(values, 99), 2),
            "max": r(values[-1] if values else float("nan"), 2),
        }
    return out


# ---- orchestration -----------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the speech, start the peers, speak every turn, run the baselines."""
    seg = SegmenterConfig()  # config.toml [vad] = the segmenter's defaults
    model = SileroModel(threads=1)
    progress("preparing utterances (espeak-ng, Opus, offline VAD replay)")
    utts = [prepare(p, model, seg) for p in PHRASES]
    words = list(PHRASES)
    turns: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with children() as started:
        _business, bport = start_business(started, "turn-business")
        env = relay_env(bport) | {
            "RELAY__ASR__GRAMMAR_WORDS": ",".join(words),
            "RELAY__TTS__CACHE_MB": str(args.tts_cache_mb),
        }
        relay, rport = start_relay(started, "turn-relay", env)
        progress(f"business :{bport}, relay :{rport} (pid {relay.pid})")
        ws_url = device_url(rport)
        metrics_url = f"http://127.0.0.1:{rport}/metrics"
        async with aiohttp.ClientSession() as http:
            for k in range(args.warmup + args.turns):
                u = utts[k % len(utts)]
                before = await scrape(http, metrics_url)
                wait0, t_turn = process_sched(relay.pid)[1], time.perf_counter()
                turn = await speak_turn(http, ws_url, metrics_url, u, k)
                wait = (process_sched(relay.pid)[1] - wait0) / (time.perf_counter() - t_turn)
                await asyncio.sleep(0.1)  # the relay records its histograms as the turn ends
                after = await scrape(http, metrics_url)
                relay.check_alive()
                label = "warm-up" if k < args.warmup else f"turn {k - args.warmup + 1}"
                if not turn.first_audio_t or turn.stt_text != u.phrase:
                    failed.append({"phrase": u.phrase, "stt_text": turn.stt_text, "turn": k})
                    progress(f"{label}: {u.phrase!r} heard as {turn.stt_text!r}: no answer")
                    continue
                row = per_turn(turn, u, before, after, seg.min_silence_s)
                row["relay_runqueue_wait"] = r(wait, 3)  # noise: ready to run, no CPU free
                progress(
                    f"{label}: {u.phrase!r} stt {row['to_stt_ms']:.0f} ms, first audio "
                    f"{row['to_first_audio_ms']:.0f} ms (vad {row['vad_decision_ms']:.0f}, asr "
                    f"{row['asr_ms']:.1f}, biz {row['business_first_ms']:.1f}, tts "
                    f"{row['tts_first_ms']:.1f}) overhead {row['overhead_vad_exact_ms']:.1f} ms"
                )
                if k >= args.warmup:
                    turns.append(row)
            progress("baselines: business first event (direct POST), ASR and TTS in-process")
            biz = await business_baseline(http, f"http://127.0.0.1:{bport}/chat", 21)
    firsts = {p: first_segment(p) for p in PHRASES}
    asr = await asr_baseline(utts, words, args.baseline_reps)
    tts = await tts_baseline(sorted(set(firsts.values())), args.baseline_reps)
    for row in turns:
        row["first_segment"] = firsts[row["phrase"]]
    st = stats(turns)
    p99 = st["overhead_goal_formula_ms"]["p99"]
    p99_exact = st["overhead_vad_exact_ms"]["p99"]
    return envelope("turn_latency", vars(args)) | {
        "config": {
            "min_silence_s": seg.min_silence_s,
            "grammar_words": words,
            "tts_cache_mb": args.tts_cache_mb,
        },
        "utterances": {
            u.phrase: {
                "packets": len(u.packets),
                "speech_end_packet": u.last_speech,
                "vad_trigger_packet": u.trigger,
                "vad_decision_audio_ms": r((u.trigger - u.last_speech) * FRAME_S * 1000, 0),
                "utterance_audio_s": r(len(u.utterance_pcm) / 32000, 2),
            }
            for u in utts
        },
        "turns": turns,
        "failed_turns": failed,
        "stats": st,
        "baselines": {
            "business_first_event_direct_ms": biz,
            "asr_in_process_ms": asr,
            "tts_first_segment_in_process_ms": tts,
        },
        "goals": [
            {
                "goal": f"relay overhead p99 <= {GOAL_OVERHEAD_P99_MS:.0f} ms (total - VAD "
                "hangover as measured - ASR - business first event - TTS synthesis of the "
                "first segment; Opus encoding counts as relay overhead)",
                "value": p99_exact,
                "pass": bool(turns) and p99_exact <= GOAL_OVERHEAD_P99_MS,
            },
            {
                "goal": f"relay overhead p99 <= {GOAL_OVERHEAD_P99_MS:.0f} ms, nominal hangover "
                "(min_silence_s in place of the measured one; counts Silero's own tail)",
                "value": p99,
                "pass": bool(turns) and p99 <= GOAL_OVERHEAD_P99_MS,
            },
        ],
    }


def table(doc: dict[str, Any]) -> str:
    """A short human-readable summary."""
    st = doc["stats"]
    lines = [
        f"turn latency: {len(doc['turns'])} turns ({len(doc['failed_turns'])} failed), "
        f"ms from the end of speech (last speech packet sent)",
        f"  {'':<28}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
    ]
    for key in STAT_KEYS:
        s = st[key]
        lines.append(f"  {key:<28}{s['p50']:>9.1f}{s['p90']:>9.1f}{s['p99']:>9.1f}{s['max']:>9.1f}")
    b = doc["baselines"]
    lines.append(
        f"  baselines: business first event direct {b['business_first_event_direct_ms']:.2f} ms; "
        f"ASR in-process {b['asr_in_process_ms']}; TTS {b['tts_first_segment_in_process_ms']}"
    )
    lines += goal_lines(doc["goals"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = parser("turn_latency", __doc__)
    p.add_argument("--turns", type=int, default=24, help="timed turns (>= 20 for a p99)")
    p.add_argument("--warmup", type=int, default=2, help="untimed turns first")
    p.add_argument(
        "--tts-cache-mb",
        type=int,
        default=0,
        help="RELAY__TTS__CACHE_MB (0: every answer is synthesised, as varying answers are; "
        "the shipped 32 serves the repeated first segment from the cache)",
    )
    p.add_argument("--baseline-reps", type=int, default=7)
    args = p.parse_args(argv)
    at_least_one(p, args.turns, args.baseline_reps, args.warmup + 1)  # no warm-up is fine
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, table on stderr."""
    return run_main(run, table, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
