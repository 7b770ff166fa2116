# tunetrace in one container: the live daemon with its embedded catalog (Milvus Lite in the
# /var/lib/tunetrace volume) and no broker of its own; it connects to yours (MQTT_HOST).
#   docker build -t tunetrace .
#   docker run -d --name tunetrace -p 127.0.0.1:8080:8080 -e MQTT_HOST=192.168.1.10 \
#     -v tunetrace-data:/var/lib/tunetrace -v ./tunetrace.yaml:/etc/tunetrace/tunetrace.yaml:ro tunetrace
#   docker run --rm -v tunetrace-data:/var/lib/tunetrace -v /srv/music:/music:ro tunetrace ingest /music
# The default config (docker/tunetrace.yaml) reads MQTT_HOST/MQTT_PORT and serves the status page,
# /metrics and /healthz on port 8080; mount your own config to add stations. SIGTERM takes the
# daemon's ordered shutdown path (<= 5 s). The full Milvus stack: docker compose --profile full.
FROM python:3.11-slim-bookworm

# ffmpeg decodes every stream and file; PortAudio + the ALSA plugins serve sound-card capture.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libportaudio2 libasound2-plugins \
    && rm -rf /var/lib/apt/lists/*

# The same install path as the systemd unit's ExecStart (/opt/tunetrace/bin/tunetrace).
RUN python -m venv /opt/tunetrace
COPY pyproject.toml README.md /src/
COPY daemon /src/daemon
RUN /opt/tunetrace/bin/pip install --no-cache-dir /src && rm -rf /src
COPY docker/tunetrace.yaml /etc/tunetrace/tunetrace.yaml

# An unprivileged user in the audio group (for /dev/snd when a sound card is passed through).
RUN useradd --system --uid 10001 --gid audio --home-dir /var/lib/tunetrace --create-home tunetrace \
    && chown tunetrace:audio /var/lib/tunetrace
USER tunetrace
ENV STATE_DIRECTORY=/var/lib/tunetrace \
    TUNETRACE_CONFIG=/etc/tunetrace/tunetrace.yaml \
    TUNETRACE_HEALTH_URL=http://127.0.0.1:8080/healthz \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/tunetrace"]
EXPOSE 8080
# 200 only while every station's pipeline progresses and the catalog answers (see docs/metrics.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/tunetrace/bin/python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['TUNETRACE_HEALTH_URL'], timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/tunetrace/bin/tunetrace"]
CMD ["serve", "--config", "/etc/tunetrace/tunetrace.yaml"]
