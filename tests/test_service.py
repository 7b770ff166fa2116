"""The daemon as systemd runs it: exit 78 on a bad config, READY/WATCHDOG/STOPPING, SIGTERM's ordered path."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.audio import Clip
from tests.fixtures.milvus import BuiltCatalog, private_catalog_copy
from tests.fixtures.systemd import NotifySocket, watched_service
from tunetrace.sdnotify import SdNotifier

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "tunetrace.service"
SHUTDOWN_LIMIT_S = 5.0


def daemon_env(**extra: str) -> dict[str, str]:
    systemd_keys = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    env = {k: v for k, v in os.environ.items() if k not in systemd_keys}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env | extra


def test_sd_notifier_sends_ready_watchdog_and_stopping(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "4000000"}
    notifier = SdNotifier.from_environment(env)
    assert notifier.watchdog_interval_s == pytest.approx(2.0)
    assert notifier.ready("2 stations")
    assert notifier.watchdog()
    assert notifier.stopping()
    messages = notify_socket.wait_for("STOPPING=1", 2.0)
    assert messages == ["READY=1\nSTATUS=2 stations", "WATCHDOG=1", "STOPPING=1"]


def test_sd_notifier_supports_abstract_sockets_and_is_a_no_op_without_systemd() -> None:
    name = f"tunetrace-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2.0)
        assert SdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert server.recv(100) == b"READY=1"
    quiet = SdNotifier.from_environment({})
    assert not quiet.enabled and not quiet.ready() and quiet.watchdog_interval_s is None


def test_watchdog_is_ignored_when_meant_for_another_process() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SdNotifier.from_environment(env).watchdog_interval_s is None


def test_serve_exits_78_on_an_invalid_config_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "tracker:\n  horizon_s: -4\nstations:\n  - name: Bad Name\n    source: {kind: ffmpeg}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "tunetrace", "serve", "--config", str(config)],
        env=daemon_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 78, result.stderr
    assert "tracker.horizon_s" in result.stderr
    assert "stations.0.name" in result.stderr
    assert "source.url is required" in result.stderr


def test_serve_exits_78_on_unparseable_yaml(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("stations: [\n")
    result = subprocess.run(
        [sys.executable, "-m", "tunetrace", "serve", "--config", str(config)],
        env=daemon_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 78
    assert "not valid YAML" in result.stderr


def read_play_log(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_event(
    path: Path, kind: str, timeout_s: float, process: subprocess.Popen[str],
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in read_play_log(path):
            if record["event"] == kind:
                return record
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"daemon exited early ({process.returncode}): {stderr}")
        time.sleep(0.2)
    raise AssertionError(f"no {kind} in {path} within {timeout_s} s: {read_play_log(path)}")




def test_sigterm_ends_the_open_play_and_stops_in_order_within_5_s(
    tmp_path: Path, clip_catalog: BuiltCatalog, real_clips: list[Clip], notify_socket: NotifySocket,
) -> None:
    play_log = tmp_path / "plays.jsonl"
    config = tmp_path / "tunetrace.yaml"
    config.write_text(
        f"data_dir: {private_catalog_copy(clip_catalog, tmp_path / 'data')}\n"
        f"milvus: {{collection_prefix: {clip_catalog.config.milvus.collection_prefix}}}\n"
        f"playlog: {{path: '{play_log}'}}\n"
        "stations:\n"
        "  - name: test-fm\n"
        f"    source: {{kind: ffmpeg, url: '{real_clips[0].path}', realtime: true, loop: true}}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tunetrace", "serve", "--config", str(config)],
        env=daemon_env(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="2000000"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        notify_socket.wait_for("READY=1", 120)
        started = wait_for_event(play_log, "play_started", 60, process)
        notify_socket.wait_for("WATCHDOG=1", 5)
        assert started["play"]["station"] == "test-fm"  # type: ignore[index]
        # In the background, the daemon searched every track for shared audio and cached it.
        shared_cache = tmp_path / "data" / "shared-audio.json"
        deadline = time.monotonic() + 30
        while not shared_cache.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        probed = json.loads(shared_cache.read_text(encoding="utf-8"))["probed"]
        assert set(probed) == {str(track.track_id) for track in clip_catalog.tracks.values()}
        assert started["play"]["track_id"] == clip_catalog.tracks[real_clips[0].path].track_id  # type: ignore[index]

        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
        stopped_in_s = time.monotonic() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    stderr = process.stderr.read() if process.stderr else ""
    assert returncode == 0, stderr
    assert stopped_in_s < SHUTDOWN_LIMIT_S + 1.0, f"stopped in {stopped_in_s:.1f} s"
    notify_socket.wait_for("STOPPING=1", 1.0)
    events = read_play_log(play_log)
    assert [e["event"] for e in events] == ["play_started", "play_ended"]
    ended = events[1]["play"]
    assert ended["play_id"] == started["play"]["play_id"]  # type: ignore[index]
    assert ended["ended_at"] is not None and ended["duration_s"] > 0  # type: ignore[index]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for required in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartPreventExitStatus=78",
                     "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=tunetrace",
                     "DeviceAllow=char-alsa", "SupplementaryGroups=audio", "PrivateTmp=yes",
                     "ProtectHome=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                     "SystemCallFilter=@system-service", "DynamicUser=yes"):
        assert required in text, required
    # ExecStart must exist on the verifying machine: point it at a binary that does.
    executable = text.split("ExecStart=", 1)[1].split()[0]
    unit = tmp_path / "tunetrace.service"
    unit.write_text(text.replace(executable, "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines() if "tunetrace.service" in line]
    assert problems == [], problems


_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def compose_interpolate(text: str) -> str:
    """What docker compose does to the file before use (no variable set): ``${X:-d}`` -> ``d``,
    ``${X}`` -> empty, ``$$`` -> ``$``."""
    return _COMPOSE_VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else (m.group(2) or ""), text)


def compose_stack() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(compose_interpolate((REPO / "docker-compose.yml").read_text()))  # type: ignore[no-any-return]


def test_docker_compose_has_the_one_container_and_the_production_stack_as_profiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Docker cannot run here: check the file parses and both profiles are wired as documented."""
    import yaml

    from tunetrace.config import parse_config

    stack = compose_stack()
    services = stack["services"]
    profiles = {name: tuple(service["profiles"]) for name, service in services.items()}
    assert {n for n, p in profiles.items() if "embedded" in p} == {"tunetrace"}, "one container, no broker"
    assert {n for n, p in profiles.items() if "full" in p} == {"etcd", "minio", "milvus", "mosquitto",
                                                                "tunetrace-full"}
    assert set(services["milvus"]["depends_on"]) == {"etcd", "minio"}
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    for name in ("tunetrace", "tunetrace-full"):
        tunetrace = services[name]
        assert tunetrace["build"]["context"] == "."
        assert (REPO / tunetrace["build"]["dockerfile"]).is_file()
        assert tunetrace["stop_signal"] == "SIGTERM"
        assert "tunetrace-data:/var/lib/tunetrace" in tunetrace["volumes"]
    assert "depends_on" not in services["tunetrace"]
    assert set(services["tunetrace-full"]["depends_on"]) == {"milvus", "mosquitto"}
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} would be published on every interface"
    for reference in [c["source"] for s in services.values() for c in s.get("configs", [])]:
        assert reference in stack["configs"]
    for volume in [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]:
        assert volume in stack["volumes"]

    full = parse_config(yaml.safe_load(stack["configs"]["tunetrace_yaml"]["content"]))
    assert full.milvus.uri == "http://milvus:19530"
    assert full.mqtt is not None and full.mqtt.host == "mosquitto"
    assert full.http is not None and full.http.port == 8080
    assert full.stations[0].source.kind == "ffmpeg"

    environment = services["tunetrace"]["environment"]
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    embedded = parse_config(yaml.safe_load(stack["configs"]["tunetrace_embedded_yaml"]["content"]))
    assert embedded.milvus.uri is None, "the embedded catalog (Milvus Lite in the data volume)"
    assert embedded.mqtt is not None and embedded.mqtt.host == "homeassistant.local"  # the user's broker
    assert embedded.http is not None and embedded.http.listen == "0.0.0.0:8080"


def test_dockerfile_is_one_unprivileged_container_with_a_healthcheck_on_healthz(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from tunetrace.config import load_config

    text = (REPO / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.replace("\\\n", " ").splitlines()
                    if line.strip() and not line.startswith("#")]
    keywords = [k for k, *_ in instructions]
    args = dict(instructions)
    assert keywords[0] == "FROM" and keywords.count("USER") == 1
    assert args["USER"].strip() == "tunetrace"
    last_run = max(i for i, k in enumerate(keywords) if k == "RUN")
    assert keywords.index("USER") > last_run, "nothing runs as root after the install"
    assert 'ENTRYPOINT ["/opt/tunetrace/bin/tunetrace"]' in text
    assert args["VOLUME"] == '["/var/lib/tunetrace"]' and args["EXPOSE"] == "8080"
    assert "STOPSIGNAL SIGTERM" in text
    healthcheck = args["HEALTHCHECK"]
    assert "CMD" in healthcheck and "TUNETRACE_HEALTH_URL" in healthcheck
    assert "TUNETRACE_HEALTH_URL=http://127.0.0.1:8080/healthz" in args["ENV"]
    for copy in (v for k, v in instructions if k == "COPY"):
        for source in copy.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            ignored = (REPO / ".dockerignore").read_text().split()
            assert not any(source.startswith(i.rstrip("/")) for i in ignored), f"COPY {source}: ignored"
    unit = UNIT.read_text()
    assert "ExecStart=/opt/tunetrace/bin/tunetrace serve" in unit

    # The image's default config: embedded catalog, the user's broker from the environment, HTTP for
    # the HEALTHCHECK; it loads as is, with no variable set.
    variables = ("MQTT_HOST", "MQTT_PORT", "MQTT_TOPIC_PREFIX", "TUNETRACE_HTTP_LISTEN",
                 "TUNETRACE_LOG_FORMAT")
    for key in variables:
        monkeypatch.delenv(key, raising=False)
    default = load_config(REPO / "docker" / "tunetrace.yaml")
    assert default.milvus.uri is None and default.mqtt is not None and default.mqtt.host == "mqtt"
    assert default.http is not None and default.http.listen == "0.0.0.0:8080"
    monkeypatch.setenv("MQTT_HOST", "192.168.1.10")
    assert load_config(REPO / "docker" / "tunetrace.yaml").mqtt.host == "192.168.1.10"  # type: ignore[union-attr]
    raw = yaml.safe_load((REPO / "docker" / "tunetrace.yaml").read_text())
    assert raw["data_dir"] == "/var/lib/tunetrace"


def test_watchdog_is_fed_only_while_the_pipeline_progresses(
    tmp_path: Path, notify_socket: NotifySocket,
) -> None:
    import asyncio

    watched = watched_service(tmp_path, notify_socket, watchdog_usec=400_000)  # ping every 0.2 s

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(watched.service.run())
        await asyncio.to_thread(notify_socket.wait_for, "READY=1", 10)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(notify_socket.wait_for, "WATCHDOG=1", 2)
        healthy = watched.pings()
        watched.catalog.hang.set()  # the next search never returns: windows stop being processed
        await asyncio.sleep(1.0)
        stuck_from = watched.pings()
        await asyncio.sleep(2.0)
        stuck_after = watched.pings()
        watched.catalog.release.set()
        watched.service.request_stop()
        async with asyncio.timeout(10):
            assert await task == 0
        return healthy, stuck_after - stuck_from

    healthy, while_stuck = asyncio.run(scenario())
    assert healthy >= 3, "pings while windows are processed"
    assert while_stuck == 0, "no pings while the pipeline is stuck"
