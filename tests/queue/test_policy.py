"""Recipient and relay decisions, as pure functions of the address, the client and the config."""

from __future__ import annotations

import dataclasses

import pytest

from vsmtp.config import Config, LocalConfig, RelayConfig
from vsmtp.queue import policy

CONFIG = Config(
    local=LocalConfig(domains=("localhost",), users=("bob",), catch_all=False), relay=RelayConfig(networks=("127.0.0.0/8", "::1/128"))
)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True), ("192.0.2.1", False), ("::2", False)],
)
def test_relay_networks_decide_who_may_relay(host: str, allowed: bool) -> None:
    assert policy.may_relay(host, policy.relay_networks(CONFIG)) is allowed


@pytest.mark.parametrize(
    ("address", "relay_allowed", "verdict"),
    [
        ("bob@localhost", False, "local"),
        ("Bob@LocalHost", False, "local"),
        ("postmaster", False, "local"),
        ("eve@localhost", False, "unknown user"),
        ("a@example.org", False, "relay denied"),
        ("a@example.org", True, "relay"),
    ],
)
def test_recipient_verdict(address: str, relay_allowed: bool, verdict: str) -> None:
    assert policy.recipient_verdict(address, CONFIG, relay_allowed=relay_allowed) == verdict


def test_catch_all_accepts_any_safe_user() -> None:
    config = dataclasses.replace(CONFIG, local=dataclasses.replace(CONFIG.local, catch_all=True))
    assert policy.recipient_verdict("anyone@localhost", config, relay_allowed=False) == "local"
