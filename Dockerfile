# tunetrace live daemon. Build: docker build -t tunetrace .   (the compose stack builds it too)
# The catalog and play log live in the /var/lib/tunetrace volume; the config is mounted at
# /etc/tunetrace/tunetrace.yaml. SIGTERM takes the daemon's ordered shutdown path (<= 5 s).
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

# An unprivileged user in the audio group (for /dev/snd when a sound card is passed through).
RUN useradd --system --uid 10001 --gid audio --home-dir /var/lib/tunetrace --create-home tunetrace \
    && mkdir -p /etc/tunetrace && chown tunetrace:audio /var/lib/tunetrace
USER tunetrace
ENV STATE_DIRECTORY=/var/lib/tunetrace \
    TUNETRACE_CONFIG=/etc/tunetrace/tunetrace.yaml \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/tunetrace"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/tunetrace/bin/tunetrace"]
CMD ["serve", "--config", "/etc/tunetrace/tunetrace.yaml"]
