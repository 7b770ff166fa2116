"""The bad-config zoo through the real command line: each is one line naming the thing and the fix,
exit 78 (EX_CONFIG, so systemd does not restart-loop), never a traceback; and the README's install
recipe gives a config the service's unprivileged user can read."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.cli import as_nobody, let_nobody_reach, run_tunetrace
from tunetrace.config import data_dir_problem, load_config, parse_config
from tunetrace.errors import ConfigError
from tunetrace.pipeline import data_dir_ready

ROOT = Path(__file__).resolve().parents[2]


def _error_text(stderr: str) -> str:
    """The error, no traceback: one line, or a headline plus one indented line per bad key."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("  ") for line in lines[1:]), stderr
    return " ".join(line.strip() for line in lines)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file (invalid UTF-8 at byte 0)"),
    ("bomb", BOMB.encode(), "expands to more than 1,000,000 values (YAML aliases"),
    ("nested", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nest"),  # libyaml: "maximum nesting depth"
    ("ca", b"mqtt: {tls: true, ca_file: /nonexistent/ca.pem}\n",
     "mqtt.ca_file: Value error, no such file: /nonexistent/ca.pem; point it at a PEM CA bundle"),
    ("milvus-ca", b"milvus: {uri: 'https://m:19530', ca_file: /nonexistent/ca.pem}\n",
     "milvus.ca_file: Value error, no such file: /nonexistent/ca.pem"),
])
def test_a_bad_config_is_one_line_and_exit_78_for_check_config_and_serve(
    tmp_path: Path, name: str, content: bytes, expected: str,
) -> None:
    config = tmp_path / f"{name}.yaml"
    config.write_bytes(content)
    for command in ("check-config", "serve"):
        started = time.monotonic()
        result = run_tunetrace(command, "--config", str(config), timeout_s=60)
        assert result.returncode == 78, (command, result.stderr)
        line = _error_text(result.stderr)
        assert line.startswith(f"config error: {config}"), line
        assert expected in line, line
        assert time.monotonic() - started < 30


def test_a_data_dir_that_cannot_be_created_is_a_config_error_for_check_config_and_serve(
    tmp_path: Path,
) -> None:
    """``serve`` used to exit 1 with a traceback while ``check-config`` said OK."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the data dir should be\n", encoding="utf-8")
    config = tmp_path / "tunetrace.yaml"
    config.write_text(f"data_dir: {blocker / 'tunetrace'}\n", encoding="utf-8")
    for command in ("check-config", "serve"):
        result = run_tunetrace(command, "--config", str(config), timeout_s=60)
        assert result.returncode == 78, (command, result.stderr)
        line = _error_text(result.stderr)
        assert f"data_dir: {blocker} is not a folder; set data_dir to a folder" in line


def test_a_data_dir_the_service_user_cannot_write_is_named_with_the_fix(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    let_nobody_reach(state)
    with as_nobody():
        problem = data_dir_problem(state / "tunetrace")
        with pytest.raises(ConfigError) as raised:
            data_dir_ready(state / "tunetrace")
    assert problem == str(raised.value)
    assert problem.startswith(
        f"data_dir: {state / 'tunetrace'} does not exist and its parent {state} is not writable by this "
        "user (uid 65534)"
    )
    assert data_dir_problem(state / "tunetrace") is None, "root may"


def test_75k_stations_validate_in_seconds() -> None:
    stations = [{"name": f"s{i}", "source": {"url": f"http://radio.example/{i}.mp3"}} for i in range(75_000)]
    started = time.monotonic()
    config = parse_config({"stations": stations})
    assert len(config.stations) == 75_000
    assert time.monotonic() - started < 20
    with pytest.raises(ConfigError, match=r"repeated: s7$"):
        parse_config({"stations": [*stations[:10], stations[7]]})


def _readme_install_mode() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = r"install -D -m (\d{4}) config/tunetrace\.example\.yaml /etc/tunetrace/tunetrace\.yaml"
    found = re.search(line, readme)
    assert found, "the README's install line for the config"
    return found.group(1)


def test_the_readme_install_recipe_gives_a_config_the_service_user_can_read(tmp_path: Path) -> None:
    """Run the README's own ``install`` line (into a scratch /etc) and read the result as the
    unprivileged user the unit's ``DynamicUser=yes`` would be."""
    installed = tmp_path / "etc" / "tunetrace" / "tunetrace.yaml"
    subprocess.run(
        [shutil.which("install") or "install", "-D", "-m", _readme_install_mode(),
         str(ROOT / "config" / "tunetrace.example.yaml"), str(installed)],
        check=True, timeout=30,
    )
    let_nobody_reach(installed)
    with as_nobody():
        config = load_config(installed)
    assert config.stations[0].name == "radio-one"
    unit = (ROOT / "systemd" / "tunetrace.service").read_text(encoding="utf-8")
    assert "\nEnvironmentFile=-/etc/tunetrace/secrets.env\n" in unit, "secrets reach the service as ${NAME}"
    assert "\nDynamicUser=yes\n" in unit


def test_an_unreadable_config_says_how_to_fix_it(tmp_path: Path) -> None:
    config = tmp_path / "tunetrace.yaml"
    config.write_text("log_level: INFO\n", encoding="utf-8")
    config.chmod(0o640)
    let_nobody_reach(config)
    with as_nobody(), pytest.raises(ConfigError) as raised:
        load_config(config)
    assert "permission denied for uid 65534" in str(raised.value)
    assert "chmod 0644" in str(raised.value)
