"""Peer addresses are checked where they enter (moeqos.core.addresses): what gRPC can dial passes, the
rest is InvalidArgument naming the setting."""

from __future__ import annotations

import pytest
from moeqos.core.addresses import check_address, same_executor_key
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


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("localhost:5001", "127.0.0.1:5001"),
        ("LOCALHOST:5001", "[::1]:05001"),
        ("0.0.0.0:5001", "[::ffff:127.0.0.1]:5001"),
        ("Executor-A.example:50061", "executor-a.example:50061"),
        ("[FE80::0:1]:80", "[fe80::1]:80"),
        ("[::ffff:10.0.0.1]:2", "10.0.0.1:2"),
        ("unix:///tmp/p.sock", "unix:/tmp/p.sock"),
    ],
)
def test_two_spellings_of_one_address_have_one_key(one, other):
    assert same_executor_key(check_address(one)) == same_executor_key(check_address(other))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("127.0.0.1:5001", "127.0.0.1:5002"),
        ("127.0.0.1:5001", "127.0.0.2:5001"),  # a server may listen on 127.0.0.2 alone
        ("executor-a:50061", "executor-b:50061"),
        ("unix:relative.sock", "unix:/relative.sock"),
        ("[fe80::1%eth0]:80", "[fe80::1%eth1]:80"),
    ],
)
def test_different_addresses_have_different_keys(one, other):
    assert same_executor_key(one) != same_executor_key(other)
