"""The AUTH password file: scrypt hashes, errors that name the line, edits seen without a
reload, `vsmtp auth hash`, and the configuration keys that go with it."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from vsmtp import config as config_mod
from vsmtp.credentials import PasswordFile, hash_password
from vsmtp.errors import ConfigError

from .daemon import VSMTP, run_cli


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_hash_checks_its_password_only(tmp_path: Path) -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("$scrypt$ln=14,r=8,p=1$") and "s3cret" not in hashed
    assert hash_password("s3cret") != hashed  # a new salt each time
    users = PasswordFile(write(tmp_path / "p", f"# users\n\nalice@example.org:{hashed}\n"))
    assert len(users) == 1
    assert users.check("alice@example.org", "s3cret")
    assert not users.check("alice@example.org", "s3cret ")
    assert not users.check("Alice@example.org", "s3cret")  # user names are exact
    assert not users.check("bob@example.org", "s3cret")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("alice:$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA\nbob secret\n", "line 2: expected user:$scrypt$..."),
        ("alice:plaintext\n", "line 1: expected $scrypt$ln=N,r=R,p=P$SALT$HASH"),
        ("alice:$scrypt$ln=30,r=8,p=1$c2FsdA$aGFzaA\n", "line 1: scrypt cost ln=30,r=8,p=1 out of range"),
        ("a:$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA\na:$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA\n", "line 2: a is listed twice"),
    ],
)
def test_a_broken_file_is_refused_with_its_line(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path / "p", text)
    with pytest.raises(ConfigError) as raised:
        PasswordFile(path)
    assert str(raised.value).startswith(f"auth.passwords: {path}, {error}")


def test_a_missing_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth\.passwords: .*cannot read"):
        PasswordFile(tmp_path / "none")


def test_an_edit_is_seen_and_a_broken_edit_keeps_the_users(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "p", f"alice:{hash_password('one')}\n")
    users = PasswordFile(path)
    users.CHECK_EVERY = 0.0
    write(path, f"alice:{hash_password('two')}\nbob:{hash_password('three')}\n")
    assert users.check("alice", "two") and users.check("bob", "three")
    write(path, f"alice:{hash_password('four')}\nbroken line\n")
    os.utime(path, ns=(1, 1))  # a different stamp, whatever the clock's resolution
    with caplog.at_level(logging.ERROR):
        assert users.check("alice", "two")
        assert users.check("bob", "three")
    assert "line 2: expected user:$scrypt$" in caplog.text and "keeping the 2 users" in caplog.text
    assert caplog.text.count("keeping") == 1  # said once per broken version


def test_auth_hash_prints_a_line_for_the_file(tmp_path: Path) -> None:
    command = [VSMTP, "auth", "hash", "alice@example.org"]
    out = subprocess.run(command, input="pass word\n", capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("alice@example.org:$scrypt$")
    users = PasswordFile(write(tmp_path / "p", line + "\n"))
    assert users.check("alice@example.org", "pass word")
    empty = subprocess.run([VSMTP, "auth", "hash"], input="\n", capture_output=True, text=True, timeout=60, check=False)
    assert empty.returncode == 1 and "empty password" in empty.stderr


def test_require_auth_needs_a_password_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[[listeners]]\nname = "submission"\nrequire_auth = true\n')
    with pytest.raises(ConfigError) as raised:
        config_mod.load(path)
    assert str(raised.value) == f"{path}, line 3: listeners.0.require_auth: needs AUTH offered here: auth.passwords set and auth not false"


def test_a_server_with_a_broken_password_file_does_not_start(tmp_path: Path) -> None:
    write(tmp_path / "passwords", "alice:oops\n")
    write(tmp_path / "c.toml", '[[listeners]]\naddresses = ["127.0.0.1:0"]\n\n[auth]\npasswords = "passwords"\n')
    out = run_cli(tmp_path, "serve", "--config", "c.toml")
    assert out.returncode == 1
    assert "auth.passwords: passwords, line 1: expected $scrypt$" in out.stderr
