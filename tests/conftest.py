"""Fixtures live in ``tests/fixtures/``, one module per real service or data source."""

pytest_plugins = [
    "tests.fixtures.audio",
    "tests.fixtures.milvus",
    "tests.fixtures.mqtt",
    "tests.fixtures.postgres",
    "tests.fixtures.streams",
    "tests.fixtures.systemd",
]
