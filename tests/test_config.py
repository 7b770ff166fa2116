"""Configuration: every problem names its key and what would be valid; secrets never leak."""

from __future__ import annotations

from pathlib import Path

import pytest

import tunetrace.config as config_module
from tunetrace.config import (
    CALIBRATED_MIN_CONFIDENCE,
    CALIBRATED_START_CONFIDENCE,
    CALIBRATED_WINDOW_HOP_S,
    Config,
    MilvusConfig,
    load_config,
    parse_config,
    with_encoder,
)
from tunetrace.errors import ConfigError


def config_error(data: object) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, "test.yaml")
    return str(raised.value)


def test_defaults_need_no_file() -> None:
    config = parse_config(None)
    assert config.encoder.name == "fingerprint"
    assert config.milvus_uri() == str(config.data_dir / "catalog.db")
    assert config.mqtt is None


def test_tuned_settings_default_to_the_configured_encoders_calibration() -> None:
    default = parse_config(None)
    assert default.matcher.min_confidence == CALIBRATED_MIN_CONFIDENCE["fingerprint"]
    assert default.tracker.start_confidence == CALIBRATED_START_CONFIDENCE["fingerprint"]
    assert default.tracker.window_hop_s == CALIBRATED_WINDOW_HOP_S["fingerprint"]
    spectral = parse_config({"encoder": {"name": "spectral"}, "matcher": {"top_k": 20}})
    assert spectral.matcher.min_confidence == CALIBRATED_MIN_CONFIDENCE["spectral"]
    assert spectral.tracker.start_confidence == CALIBRATED_START_CONFIDENCE["spectral"]
    assert spectral.tracker.window_hop_s == CALIBRATED_WINDOW_HOP_S["spectral"]
    assert spectral.matcher.top_k == 20
    explicit = parse_config({"matcher": {"min_confidence": 0.33}, "tracker": {"start_confidence": 0.7}})
    assert (explicit.matcher.min_confidence, explicit.tracker.start_confidence) == (0.33, 0.7)


def test_switching_encoder_moves_a_default_threshold_but_keeps_an_explicit_one() -> None:
    moved = with_encoder(parse_config(None), "spectral")
    assert moved.encoder.name == "spectral"
    assert moved.matcher.min_confidence == CALIBRATED_MIN_CONFIDENCE["spectral"]
    assert moved.tracker.start_confidence == CALIBRATED_START_CONFIDENCE["spectral"]
    assert moved.tracker.window_hop_s == CALIBRATED_WINDOW_HOP_S["spectral"]
    explicit = parse_config({"matcher": {"min_confidence": 0.33}, "tracker": {"start_confidence": 0.7}})
    kept = with_encoder(explicit, "spectral")
    assert (kept.matcher.min_confidence, kept.tracker.start_confidence) == (0.33, 0.7)


def test_an_unknown_key_is_named_with_the_valid_keys_beside_it() -> None:
    message = config_error({"matcher": {"top_kk": 5}})
    assert "test.yaml: invalid configuration" in message
    assert "matcher.top_kk: unknown key; valid keys here: " in message
    valid = message.split("valid keys here: ")[1].split(", ")
    assert "top_k" in valid
    assert "min_confidence" in valid


def test_an_unknown_top_level_key_lists_the_sections() -> None:
    message = config_error({"milvs": {}})
    assert "milvs: unknown key" in message
    assert "milvus" in message
    assert "encoder" in message


def test_an_unknown_key_in_a_list_item_is_named_with_its_index_and_the_valid_keys() -> None:
    message = config_error({"stations": [{"name": "one", "source": {"url": "x", "bogus": 1}}]})
    assert "stations.0.source.bogus: unknown key; valid keys here: " in message
    assert "url" in message.split("valid keys here: ")[1].split(", ")


def test_an_unknown_key_in_an_optional_section_lists_its_valid_keys() -> None:
    message = config_error({"mqtt": {"hots": "broker"}})
    assert "mqtt.hots: unknown key; valid keys here: " in message
    assert "host" in message.split("valid keys here: ")[1].split(", ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"matcher": {"top_k": 0}}, "matcher.top_k: Input should be greater than or equal to 1 (got 0)"),
        ({"encoder": {"name": "vgg"}}, "encoder.name: Input should be 'fingerprint', 'spectral' or 'vggish'"),
        ({"mqtt": {"port": 70000}}, "mqtt.port: Input should be less than or equal to 65535 (got 70000)"),
        ({"milvus": {"collection_prefix": "bad-name"}}, "milvus.collection_prefix: String should match"),
        ({"matcher": {"speed_ratios": [3.0]}}, "speed_ratios must be a non-empty list of ratios between 0.5"),
        ({"stations": [{"name": "x", "source": {"kind": "ff"}}]}, "stations.0.source.kind: Input should be"),
        ({"stations": [{"name": "x", "source": {"kind": "ffmpeg"}}]}, "source.url is required for kind"),
    ],
    ids=["out-of-range", "bad-choice", "bad-port", "bad-pattern", "cross-field", "nested", "missing-url"],
)
def test_a_bad_value_is_named_with_why(data: object, expected: str) -> None:
    assert expected in config_error(data)


def test_every_problem_is_listed_not_only_the_first() -> None:
    message = config_error({"matcher": {"top_k": 0, "min_confidence": 2}, "ingest": {"insert_batch": 0}})
    assert "matcher.top_k" in message
    assert "matcher.min_confidence" in message
    assert "ingest.insert_batch" in message


def test_duplicate_station_names_are_refused() -> None:
    station = {"name": "radio-one", "source": {"url": "http://127.0.0.1/x"}}
    assert "repeated: radio-one" in config_error({"stations": [station, station]})


def test_the_top_level_must_be_a_mapping() -> None:
    assert "the top level must be a mapping of keys, not list" in config_error(["a"])


def test_environment_variables_are_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TT_TEST_HOST", "broker.example")
    monkeypatch.setenv("TT_TEST_DIR", "/srv/tunetrace")
    config = parse_config({"mqtt": {"host": "${TT_TEST_HOST}"}, "data_dir": "${TT_TEST_DIR}/state"})
    assert config.mqtt is not None
    assert config.mqtt.host == "broker.example"
    assert config.data_dir == Path("/srv/tunetrace/state")


def test_an_unset_environment_variable_names_the_key_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TT_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as raised:
        parse_config({"mqtt": {"password": "${TT_TEST_UNSET}"}})
    message = str(raised.value)
    assert message.startswith(
        "mqtt.password: refers to environment variable ${TT_TEST_UNSET}, which is not set"
    )
    assert "export TT_TEST_UNSET" in message


def test_secrets_from_the_environment_stay_out_of_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    secret_password, secret_token = "hunter2-mqtt-secret", "root:milvus-secret"
    monkeypatch.setenv("TT_TEST_PASSWORD", secret_password)
    monkeypatch.setenv("TT_TEST_TOKEN", secret_token)
    config = parse_config({
        "mqtt": {"username": "daemon", "password": "${TT_TEST_PASSWORD}"},
        "milvus": {"uri": "http://127.0.0.1:19530", "token": "${TT_TEST_TOKEN}"},
    })
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == secret_password
    assert config.milvus.token is not None and config.milvus.token.get_secret_value() == secret_token
    for text in (repr(config), str(config), repr(config.mqtt), repr(config.milvus), config.model_dump_json()):
        assert secret_password not in text
        assert secret_token not in text
    # A bad value next to a secret must not echo the secret back either.
    message = config_error({"mqtt": {"password": ["not", "a", "string", secret_password]}})
    assert "mqtt.password" in message
    assert secret_password not in message


def test_sections_are_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        setattr(config.matcher, "top_k", 3)  # noqa: B010 - the point is to try at run time
    assert isinstance(config.milvus, MilvusConfig)


def test_a_file_is_loaded_and_its_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tunetrace.yaml"
    path.write_text("matcher:\n  top_k: 20\n", encoding="utf-8")
    assert load_config(path).matcher.top_k == 20

    path.write_text("matcher:\n  top_k: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tunetrace\.yaml: not valid YAML at line 3, column 1"):
        load_config(path)

    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the config file: No such file"):
        load_config(tmp_path / "missing.yaml")


def test_the_config_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text("log_level: DEBUG\n", encoding="utf-8")
    monkeypatch.setenv("TUNETRACE_CONFIG", str(path))
    assert load_config().log_level == "DEBUG"


def test_the_data_dir_follows_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/tunetrace:/var/lib/other")
    assert Config().data_dir == Path("/var/lib/tunetrace")


def test_a_shell_command_without_data_dir_is_warned_that_the_units_catalog_is_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    unit_dir = tmp_path / "var-lib-tunetrace"
    unit_dir.mkdir()
    (unit_dir / "catalog.db").write_bytes(b"")
    monkeypatch.setattr(config_module, "UNIT_STATE_DIR", unit_dir)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home"))

    with caplog.at_level("WARNING", logger="tunetrace.config"):
        assert Config().data_dir == tmp_path / "home" / "tunetrace"
    assert f"set data_dir: {unit_dir}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tunetrace.config"):
        parse_config({"data_dir": str(unit_dir)})
        monkeypatch.setenv("STATE_DIRECTORY", str(unit_dir))
        Config()
    assert caplog.text == "", "no warning when the data_dir is said, or under systemd"


def test_environment_references_may_carry_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TT_TEST_UNSET", raising=False)
    monkeypatch.setenv("TT_TEST_EMPTY", "")
    monkeypatch.setenv("TT_TEST_PORT", "8883")
    config = parse_config({"mqtt": {"host": "${TT_TEST_UNSET:-broker.lan}", "port": "${TT_TEST_PORT:-1883}",
                                    "client_id": "${TT_TEST_EMPTY:-fallback}"}})
    assert config.mqtt is not None
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.client_id) == ("broker.lan", 8883, "fallback")
