"""Sender authentication tests: keys made once per run, a zone with the SPF, DKIM, DMARC and
ARC records the tests need (tests/auth/auth.zone, with the keys filled in), served on
loopback by tests/dnsserver.py; names under silent.test are never answered."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsmtp.auth import dkim
from vsmtp.config import Config, DnsConfig, SigningKeyConfig

from ..conftest import with_changes
from ..dnsserver import DnsServer

ZONE = Path(__file__).with_name("auth.zone")


@dataclasses.dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    algorithm: str
    path: Path
    record: str

    @property
    def secret(self) -> dkim.SigningKey:
        return dkim.SigningKey.load(self.config())

    def config(self) -> SigningKeyConfig:
        return SigningKeyConfig(domain=self.domain, selector=self.selector, key=str(self.path), algorithm=self.algorithm)  # type: ignore[arg-type]


# (zone placeholder, domain, selector, algorithm): the keys the zone publishes.
KEYS = (
    ("SIGNED_RSA", "signed.test", "sel", "rsa-sha256"),
    ("SIGNED_ED", "signed.test", "ed", "ed25519-sha256"),
    ("FORWARDER", "fwd.test", "arc", "rsa-sha256"),
    ("OURS_RSA", "ours.test", "rsa", "rsa-sha256"),
    ("OURS_ED", "ours.test", "ed", "ed25519-sha256"),
    ("OPENDKIM", "signed.test", "od", "rsa-sha256"),
    ("OPENDKIM_ED", "signed.test", "ode", "ed25519-sha256"),
)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("dkim")
    made = {}
    for placeholder, domain, selector, algorithm in KEYS:
        pem, record = dkim.generate(algorithm)
        path = directory / f"{selector}.{domain}.key"
        path.write_bytes(pem)
        path.chmod(0o600)
        made[placeholder] = Key(domain, selector, algorithm, path, record)
    return made


def zone_text(keys: dict[str, Key]) -> str:
    text = ZONE.read_text()
    for placeholder, key in keys.items():
        strings = " ".join(f'"{key.record[i : i + 200]}"' for i in range(0, len(key.record), 200))
        text = text.replace(f"@{placeholder}@", strings)
    return text


@pytest.fixture(scope="session")
def auth_dns(keys: dict[str, Key]) -> Iterator[DnsServer]:
    with DnsServer(zone_text(keys), "test.", silent=("silent.test.",)) as server:
        yield server


@pytest.fixture
def auth_config(config: Config, auth_dns: DnsServer) -> Config:
    """The tests' configuration with the DNS of the auth zone, SPF and DMARC as shipped (tag)."""
    return with_changes(
        config,
        dns=DnsConfig(nameservers=(f"{auth_dns.host}:{auth_dns.port}",), timeout=2.0),
        spf={"mode": "tag", "timeout": 2.0},
        dmarc={"mode": "tag", "timeout": 2.0},
        local={"domains": ("localhost", "ours.test")},
    )
