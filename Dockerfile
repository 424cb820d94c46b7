# Kokoro's Mandarin and English voices: the npm package kokoro-js (asr_tts/tts/kokoro_npm.py).
FROM node:20-slim AS voices
RUN npm pack kokoro-js@1.2.1 --silent \
 && mkdir /voices \
 && tar -xzf kokoro-js-1.2.1.tgz -C /voices --strip-components=1 package/voices package/LICENSE

FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopus0 espeak-ng \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY protocol protocol
COPY aioutil aioutil
COPY bridges bridges
COPY asr_tts asr_tts
COPY relay relay
COPY metrics metrics
COPY devsim devsim
COPY --from=voices /voices /usr/local/share/kokoro-js
RUN pip install --no-cache-dir . \
 && python -c 'from asr_tts.tts import kokoro_npm as n; assert n.read(), "no kokoro-js voices"' \
 && python -c 'from asr_tts.tts import kokoro_files as f; f.check(f.locate())' \
 && python -c 'from asr_tts.asr.whisper import check_model; check_model()'
COPY config.toml ./
COPY examples examples
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it (deploy/kubernetes/).
RUN useradd --system --uid 10001 --user-group --no-create-home relay
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["python", "-m", "relay", "serve", "--config", "/app/config.toml"]
