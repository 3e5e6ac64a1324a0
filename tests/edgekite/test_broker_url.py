"""One way to read a broker URL, for the bridge, the sync worker and the hub's consumers."""

from __future__ import annotations

import pytest

from edgekite.broker_url import BrokerAddress


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://10.0.0.5:1884", "10.0.0.5", 1884, False),
        ("mqtts://hub.example.net", "hub.example.net", 8883, True),
        ("tcp://broker", "broker", 1883, False),
        ("ssl://broker:9883", "broker", 9883, True),
        ("broker.local:1999", "broker.local", 1999, False),
        ("mqtt://[2001:db8::1]:1883", "2001:db8::1", 1883, False),
    ],
)
def test_schemes_default_ports_and_tls(url: str, host: str, port: int, tls: bool) -> None:
    addr = BrokerAddress.parse(url)
    assert (addr.host, addr.port, addr.tls) == (host, port, tls)


def test_credentials_in_the_url_are_percent_decoded_and_left_out_of_the_display_form() -> None:
    addr = BrokerAddress.parse("mqtts://edge%2D1:p%40ss%3Aword@hub:8883")
    assert (addr.username, addr.password) == ("edge-1", "p@ss:word")
    assert addr.url == "mqtts://hub:8883"


def test_an_unknown_scheme_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"sync.hub_mqtt_url: unsupported scheme 'http'"):
        BrokerAddress.parse("http://hub:8090", what="sync.hub_mqtt_url")


@pytest.mark.parametrize("bad", ["mqtt://h:1883/topic", "mqtt://:1883", "mqtt://h:notaport", "mqtt://h?x=1"])
def test_what_would_be_misread_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"mqtt\.url"):
        BrokerAddress.parse(bad, what="mqtt.url")
