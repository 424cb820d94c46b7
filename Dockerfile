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
RUN pip install --no-cache-dir . \
 && python -c 'from asr_tts.tts import kokoro_files as f; f.check(f.locate())'
COPY config.toml ./
COPY examples examples
RUN useradd --system relay
USER relay
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["python", "-m", "relay", "serve", "--config", "/app/config.toml"]
