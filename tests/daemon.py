"""Run `vsmtp serve` as a real subprocess in a directory of its own, as an operator would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VSMTP = str(Path(sys.executable).with_name("vsmtp"))
_BOUND = re.compile(r"listener \S+ \(\w+\): accepting SMTP on 127\.0\.0\.1 port (\d+)")


class Daemon:
    """`vsmtp serve` in `workdir`, on an ephemeral port (read back from its log)."""

    def __init__(self, workdir: Path, config_text: str, *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = {**os.environ, **env} if env else None
        self.config = workdir / "vsmtp.toml"
        self.write_config(config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0

    def write_config(self, text: str) -> None:
        if "[dns]" not in text:  # loopback only: never the Internet's DNS (see conftest.NO_DNS)
            text += '\n[dns]\nnameservers = ["127.0.0.1:1"]\ntimeout = 2.0\n'
        self.config.write_text(text)

    def start(self, *, timeout: float = 20) -> int:
        self.runs += 1
        log = self.workdir / f"serve-{self.runs}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [VSMTP, "serve", "--config", str(self.config)], cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: the daemon logs "ready" or exits
            text = log.read_text(errors="replace")
            if "vsmtp ready" in text:
                match = _BOUND.search(text)
                assert match, text
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                raise AssertionError(f"vsmtp serve exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"vsmtp serve not ready after {timeout}s:\n{log.read_text(errors='replace')}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(20)
        self.proc = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("serve-*.log")))


def wait_until(predicate: Callable[[], object], what: Callable[[], str] | str, *, timeout: float = 20, interval: float = 0.05) -> None:
    """Poll `predicate` until it holds; fail with `what` (a text, or a function making one:
    a log, say) after `timeout` seconds. The bound every waiting loop of the tests needs."""
    deadline = time.monotonic() + timeout
    while not predicate():  # bounded by the deadline
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(interval)


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VSMTP, *args], cwd=workdir, capture_output=True, text=True, timeout=60, check=False)
