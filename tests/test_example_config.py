"""The example config is the documentation of every key: it must load and mention them all."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from tunetrace.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "tunetrace.example.yaml"


def _keys(model: type[BaseModel]) -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        for candidate in candidates:
            inner = getattr(candidate, "__args__", (candidate,))
            for item in inner:
                if isinstance(item, type) and issubclass(item, BaseModel):
                    keys |= _keys(item)
    return keys


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.stations and config.stations[0].name == "radio-one"
    assert config.mqtt is not None


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    mentioned = set(re.findall(r"^\s*#?\s*-?\s*([a-z_]+):", text, flags=re.MULTILINE))
    missing = sorted(_keys(Config) - mentioned)
    assert not missing, f"keys missing from {EXAMPLE.name}: {missing}"
