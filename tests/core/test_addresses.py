"""Peer addresses are checked where they enter (moeqos.core.addresses): what gRPC can dial passes, the
rest is InvalidArgument naming the setting."""

from __future__ import annotations

import pytest
from moeqos.core.addresses import check_address
from moeqos.core.errors import InvalidArgument


@pytest.mark.parametrize(
    "good",
    [
        "executor-a:50061",
        "127.0.0.1:1",
        "localhost:65535",
        "[::1]:50051",
        "[fe80::1%eth0]:80",
        "unix:/tmp/p.sock",
        "unix:///tmp/p.sock",
        "unix:relative.sock",
        "my_host.example.com:443",
    ],
)
def test_dialable_addresses_pass(good):
    assert check_address(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "::bad::",
        ":::50051",
        "host",
        "host:",
        ":80",
        "host:0",
        "host:65536",
        "host:8o",
        "-x-:80",
        "a..b:80",
        "[zz]:80",
        "::1:80",
        "unix:",
        "unix:///",
        "host :80",
        "http://host:80",
    ],
)
def test_malformed_addresses_are_invalid_arguments_naming_the_setting(bad):
    with pytest.raises(InvalidArgument, match="planner_address"):
        check_address(bad, "planner_address")


def test_only_a_listening_address_may_ask_for_port_zero():
    assert check_address("127.0.0.1:0", allow_port_zero=True) == "127.0.0.1:0"
    with pytest.raises(InvalidArgument, match=r"port in 1\.\.65535"):
        check_address("127.0.0.1:0")
