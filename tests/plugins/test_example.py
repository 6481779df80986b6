"""docs/plugins.md as a user follows it: plugins/example installed with pip (into a directory
of its own, not the project's environment), listed by `vsmtp plugins list`, loaded by a
real `vsmtp serve` and seen at work over SMTP."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from ..daemon import VSMTP, Daemon, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "plugins" / "example"
CONFIG = """
plugins = ["example"]

[plugin.example]
greeting = "hello from the example plugin"
refuse = ["spammer@example.net"]

[[listeners]]
addresses = ["127.0.0.1:0"]
"""


@pytest.mark.slow
def test_the_example_plugin_installs_with_pip_and_loads(tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(target)}
    (tmp_path / "vsmtp.toml").write_text(CONFIG)

    listed = subprocess.run(
        [VSMTP, "plugins", "list", "--json", "--config", "vsmtp.toml"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    [example] = [row for row in json.loads(listed.stdout) if row["name"] == "example"]
    assert example == {
        "name": "example",
        "loaded": True,
        "installed": True,
        "distribution": "vsmtp-example",
        "version": "1.0.0",
        "hooks": ["vsmtp_configure", "vsmtp_data", "vsmtp_mail"],
    }

    daemon = Daemon(tmp_path, CONFIG, env=env)
    try:
        port = daemon.start()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("c")
            assert client.mail("spammer@example.net")[0] == 550
            client.rset()
            client.sendmail("a@example.org", ["bob@localhost"], "Subject: hi\r\n\r\nhello\r\n")
        new = tmp_path / "var" / "mail" / "bob" / "Maildir" / "new"
        wait_until(lambda: new.is_dir() and any(new.iterdir()), "the message in bob's Maildir")
        [delivered] = new.iterdir()
        assert b"X-Example: hello from the example plugin\r\n" in delivered.read_bytes()
        assert "plugin example loaded (hooks: " in daemon.log()
    finally:
        daemon.kill()
