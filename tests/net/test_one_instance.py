"""One vsmtp per address: a second, unrelated vsmtp (another directory, another journal) on
an address the first listens on fails with "address already in use", naming it, instead of
sharing the port and splitting the mail between two journals."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ..daemon import Daemon


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_second_vsmtp_on_the_same_address_fails_naming_it(tmp_path: Path, workers: int) -> None:
    port = free_port()
    config = f'workers = {workers}\n[[listeners]]\naddresses = ["127.0.0.1:{port}"]\n'
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Daemon(tmp_path / "first", config)
    second = Daemon(tmp_path / "second", config)
    first.start()
    try:
        with pytest.raises(AssertionError, match="exited with 1") as failed:
            second.start()
        assert f"cannot bind 127.0.0.1:{port}" in str(failed.value) and "Address already in use" in str(failed.value)
    finally:
        first.kill()
        second.kill()
    first.start()  # and the first one's own restart is not refused by what it left behind
    first.kill()
