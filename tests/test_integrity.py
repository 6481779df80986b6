"""Nothing altered is ever delivered: a flipped byte in a body, a flipped byte in a record and
a truncated data file are each found (by `vsmtp journal verify`, and by `vsmtp serve` where
it reads them), the message is held in the quarantine `corrupt`, and `vsmtp journal salvage`
copies the rest into a fresh journal that serves."""

from __future__ import annotations

import json
import os
import signal
import smtplib
from pathlib import Path

import pytest

from .daemon import Daemon, run_cli, wait_until

KEPT = 'workers = 0\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n[delivery]\nenabled = false\n'
DELIVERING = 'workers = 0\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n'


def send(port: int, marker: str, sender: str = "a@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(sender, ["bob@localhost"], f"Subject: {marker}\r\n\r\nthe body says {marker}\r\n")


def flip(path: Path, needle: bytes) -> int:
    """Change one byte of every copy of `needle` in the file (LMDB may keep old pages too)."""
    data = bytearray(path.read_bytes())
    found, start = 0, 0
    while (at := data.find(needle, start)) >= 0:
        data[at + len(needle) // 2] ^= 0x20
        found, start = found + 1, at + 1
    path.write_bytes(bytes(data))
    return found


def delivered(workdir: Path) -> list[Path]:
    new = workdir / "var" / "mail" / "bob" / "Maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


@pytest.mark.slow
def test_a_flipped_body_byte_is_held_not_delivered_and_verify_names_it(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, KEPT)
    port = daemon.start()
    send(port, "ALTER-THIS-BODY-0123456789")
    send(port, "A-SOUND-MESSAGE-9876543210")
    daemon.kill(signal.SIGTERM)
    assert flip(tmp_path / "var" / "journal" / "data.mdb", b"ALTER-THIS-BODY-0123456789") >= 1
    checked = run_cli(tmp_path, "journal", "verify", "--config", "vsmtp.toml")
    assert checked.returncode == 1 and "is corrupt: checksum mismatch" in checked.stdout, checked.stdout
    daemon.write_config(DELIVERING)
    daemon.start()
    try:
        wait_until(lambda: len(delivered(tmp_path)) == 1, daemon.log)
        wait_until(lambda: "held in the quarantine 'corrupt'" in daemon.log(), daemon.log)
        [good] = delivered(tmp_path)
        assert b"A-SOUND-MESSAGE" in good.read_bytes()  # the other message goes on
        held = run_cli(tmp_path, "queue", "list", "--quarantine", "corrupt", "--json", "--config", "vsmtp.toml")
        [row] = json.loads(held.stdout)
        assert row["quarantine"] == "corrupt"
    finally:
        daemon.kill()
    assert not any(b"ALTER-THIS" in path.read_bytes() or b"ALTER-tHIS" in path.read_bytes() for path in delivered(tmp_path))


@pytest.mark.slow
def test_a_flipped_record_byte_is_named_and_serve_refuses_to_start(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, KEPT)
    port = daemon.start()
    send(port, "record test", sender="flip-this-sender@example.org")
    daemon.kill(signal.SIGKILL)  # no checkpoint: the next start reads every record
    assert flip(tmp_path / "var" / "journal" / "data.mdb", b"flip-this-sender@example.org") >= 1
    checked = run_cli(tmp_path, "journal", "verify", "--config", "vsmtp.toml")
    assert checked.returncode == 1 and "checksum mismatch" in checked.stdout
    with pytest.raises(AssertionError, match="exited with 1") as refused:
        daemon.start()
    assert "is damaged" in str(refused.value) and "vsmtp journal salvage" in str(refused.value)
    assert "Traceback" not in str(refused.value)


@pytest.mark.slow
def test_a_truncated_journal_gives_a_clear_error_and_salvage_recovers_the_rest(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, KEPT)
    port = daemon.start()
    for n in range(40):
        send(port, f"message {n} " + ("x" * 70 + "\r\n") * 40)
    daemon.kill(signal.SIGTERM)
    data = tmp_path / "var" / "journal" / "data.mdb"
    os.truncate(data, data.stat().st_size * 3 // 4)
    checked = run_cli(tmp_path, "journal", "verify", "--config", "vsmtp.toml")
    assert checked.returncode == 1 and "is truncated" in checked.stderr and checked.returncode != -7  # not SIGBUS
    with pytest.raises(AssertionError, match="exited with 1") as refused:
        daemon.start()
    assert "is truncated" in str(refused.value)
    saved = run_cli(tmp_path, "journal", "salvage", "var/salvaged", "--json", "--config", "vsmtp.toml")
    assert saved.returncode == 0, saved.stderr
    report = json.loads(saved.stdout)
    assert report["records"] > 0 and report["blobs"] > 0
    os.rename(tmp_path / "var" / "journal", tmp_path / "var" / "journal.damaged")
    os.rename(tmp_path / "var" / "salvaged", tmp_path / "var" / "journal")
    again = run_cli(tmp_path, "journal", "verify", "--config", "vsmtp.toml")
    assert "does not decode" not in again.stdout and "checksum" not in again.stdout, again.stdout
    daemon.write_config(DELIVERING)
    daemon.start()  # the salvaged journal serves: what was kept is delivered
    try:
        wait_until(lambda: len(delivered(tmp_path)) >= report["blobs"] // 2, daemon.log)
    finally:
        daemon.kill()
