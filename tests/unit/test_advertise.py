"""The address a peer advertises: flags, wildcard listens and bare IPv6 pod IPs."""

from __future__ import annotations

import pytest

from shoal.peer.daemon import advertised, check_control_address


def test_explicit_advertise_wins() -> None:
    assert advertised("0.0.0.0:7401", 7401, "peer-0.shoal:7401") == "peer-0.shoal:7401"


def test_bare_ipv6_pod_ip_is_bracketed() -> None:
    assert advertised("[::]:7401", 7401, "fd00:10:244::5:7401") == "[fd00:10:244::5]:7401"
    assert advertised("[::]:7401", 7401, "[fd00::5]:7401") == "[fd00::5]:7401"


def test_listen_address_with_the_bound_port() -> None:
    assert advertised("127.0.0.1:0", 40123, None) == "127.0.0.1:40123"


def test_bad_advertise_is_rejected() -> None:
    with pytest.raises(ValueError):
        advertised("127.0.0.1:0", 1, "no-port")


def test_control_address_must_be_local() -> None:
    assert check_control_address("unix:/data/control.sock") == "unix:/data/control.sock"
    assert check_control_address("127.0.0.1:7499") == "127.0.0.1:7499"
    with pytest.raises(ValueError):
        check_control_address("10.0.0.5:7499")
