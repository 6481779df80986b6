"""A private Postfix instance (Debian package postfix): its own main.cf, master.cf, queue,
data and Maildirs under one directory, listening on one loopback address, delivering every
message for its domains to a Maildir with the virtual transport, and unable to send
anything anywhere else. With a certificate chain it offers STARTTLS. Used as a real
receiving MX by the tests and as the server vsmtp is measured against by tools/bench.py.
Stopped by its master's PID (the pid file its queue directory holds)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NOBODY = 65534  # the owner of the Maildirs (virtual_uid_maps)
LIFETIME = 1800  # seconds an instance lives at most if whoever started it dies without stopping it


def installed() -> bool:
    return shutil.which("postfix") is not None or Path("/usr/sbin/postfix").exists()


class PrivatePostfix:
    def __init__(
        self,
        root: Path,
        *,
        domains: dict[str, list[str]],  # domain -> the users (local parts) it takes mail for
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str = "postfix.test",
        tls_chain: Path | None = None,  # one PEM file: the key, then the certificate and its chain
        hold: bool = False,  # every message into the hold queue, delivered never (accepting alone, measured)
    ) -> None:
        self.root = root
        self.etc = root / "etc"
        self.mail = root / "mail"
        self.host = host
        self.port = port or _free_port(host)
        self.domains = domains
        self.hostname = hostname
        self.tls_chain = tls_chain
        self.hold = hold
        self._watchdog: subprocess.Popen[bytes] | None = None

    def maildir(self, domain: str, user: str) -> Path:
        return self.mail / domain / user / "new"

    @property
    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        for d in (self.etc, self.root / "queue", self.root / "data", self.mail):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", "postfix")
        os.chown(self.mail, NOBODY, NOBODY)
        entries = [f"{user}@{domain} {domain}/{user}/" for domain, users in self.domains.items() for user in users]
        (self.etc / "vmailbox").write_text("\n".join(entries) + "\n")
        settings = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.root / 'queue'}",
            f"data_directory = {self.root / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            f"myhostname = {self.hostname}",
            "mydestination =",
            "inet_interfaces = loopback-only",  # its own addresses; smtpd listens on host:port alone (master.cf)
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "relayhost =",
            "default_transport = error:private instance: no remote delivery",
            "relay_transport = error:private instance: no remote delivery",
            "smtpd_relay_restrictions = reject_unauth_destination",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            f"virtual_mailbox_domains = {' '.join(self.domains)}",
            f"virtual_mailbox_base = {self.mail}",
            f"virtual_mailbox_maps = texthash:{self.etc / 'vmailbox'}",
            f"virtual_uid_maps = static:{NOBODY}",
            f"virtual_gid_maps = static:{NOBODY}",
            "virtual_minimum_uid = 100",
            f"maillog_file = {self.root / 'maillog'}",
            f"maillog_file_prefixes = {self.root}",
        ]
        if self.hold:
            settings.append("smtpd_data_restrictions = check_client_access static:HOLD")
        if self.tls_chain is not None:
            settings += ["smtpd_tls_security_level = may", f"smtpd_tls_chain_files = {self.tls_chain}", "smtpd_tls_loglevel = 1"]
        (self.etc / "main.cf").write_text("\n".join(settings) + "\n")
        master = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if not line or line[0] in "# \t" or len(fields) < 8:
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"{self.host}:{self.port}"
            if (fields[0] == "tlsmgr" and self.tls_chain is None) or fields[7] == "pipe":
                continue  # no pipe transports; the TLS manager only when smtpd offers TLS
            fields[4] = "n"  # no chroot: the queue lives in our own directory
            master.append(" ".join(fields))
        (self.etc / "master.cf").write_text("\n".join(master) + "\n")
        subprocess.run(["postfix", "-c", str(self.etc), "start"], check=True, capture_output=True, timeout=60)
        self._watch()
        deadline = time.monotonic() + 30
        while True:  # bounded: until smtpd's port takes connections
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not listen on {self.host}:{self.port}: {self.log[-2000:]}")
            time.sleep(0.1)

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _watch(self) -> None:
        """The master is a daemon, not our child: a watchdog (bounded by LIFETIME) stops it by
        its PID if this process dies without stopping it."""
        master = self.master_pid()
        if master is None:
            return
        alive = f"kill -0 {os.getpid()} 2>/dev/null && [ $i -lt {LIFETIME} ]"
        script = f"i=0; while {alive}; do sleep 1; i=$((i+1)); done; kill {master} 2>/dev/null"
        self._watchdog = subprocess.Popen(
            ["sh", "-c", script], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        """SIGTERM to the master (by its PID), which stops its children; SIGKILL if it lingers."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:  # bounded
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> PrivatePostfix:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
