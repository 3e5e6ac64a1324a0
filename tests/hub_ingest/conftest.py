"""The broker tests' Mosquitto and paho fixtures, reused for the hub broker's ACL."""

from tests.broker.conftest import mosquitto_factory, mqtt_connect  # noqa: F401
