"""A private Dovecot (Debian's dovecot-core, dovecot-lmtpd, dovecot-imapd) for the delivery
tests: LMTP and IMAP on loopback ports, users from a passwd-file, mail stored as `nobody` in
a directory of its own, started in the foreground and stopped by its PID.

Dovecot will not store mail as root, and its mail processes run as the mailbox user, so the
whole tree lives outside pytest's 0700 temporary directories (in a 0755 directory under
/tmp, removed at the end) and the mail root belongs to `nobody`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DOVECOT = "/usr/sbin/dovecot"
LDA = "/usr/lib/dovecot/dovecot-lda"
PASSWORD = "secret"

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = lmtp imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{root}/mail/%n/Maildir
mail_plugins = quota
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
lmtp_add_received_header = no
lmtp_save_to_detail_mailbox = no
postmaster_address = postmaster@example.org
quota_full_tempfail = {tempfail}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/users
}}
plugin {{
  quota = maildir:User quota
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
protocol lda {{
  mail_plugins = $mail_plugins
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Dovecot:
    root: Path
    config: Path
    lmtp: int
    imap: int

    @property
    def socket(self) -> Path:
        """LMTP's unix socket."""
        return self.root / "run" / "lmtp"

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def needed() -> None:
    if not Path(DOVECOT).exists() or not Path("/usr/lib/dovecot/lmtp").exists() or not Path("/usr/lib/dovecot/imap").exists():
        pytest.skip("Dovecot is not installed (Debian packages dovecot-lmtpd and dovecot-imapd: tools/system-packages, as root)")
    if os.geteuid() != 0:
        pytest.skip("a private Dovecot stores mail as another user: the test needs root")


@contextlib.contextmanager
def running(users: dict[str, str], *, tempfail: bool = False) -> Iterator[Dovecot]:
    """Dovecot with these users (name -> extra userdb fields, e.g. a quota rule), until the block ends."""
    needed()
    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="vsmtp-dovecot-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "mail").mkdir()
        os.chown(root / "mail", nobody.pw_uid, nobody.pw_gid)
        lines = [
            f"{name}:{{PLAIN}}{PASSWORD}:{nobody.pw_uid}:{nobody.pw_gid}::{root}/mail/{name}::{extra}" for name, extra in users.items()
        ]
        (root / "users").write_text("\n".join(lines) + "\n")
        dovecot = Dovecot(root, root / "dovecot.conf", free_port(), free_port())
        dovecot.config.write_text(CONFIG.format(root=root, lmtp=dovecot.lmtp, imap=dovecot.imap, tempfail="yes" if tempfail else "no"))
        process = subprocess.Popen([DOVECOT, "-c", str(dovecot.config), "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(dovecot, process)
            yield dovecot
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_listening(dovecot: Dovecot, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"dovecot stopped at start (status {process.returncode}): {error}{dovecot.log()}")
        try:
            for port in (dovecot.lmtp, dovecot.imap):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"dovecot did not listen within 30 s: {dovecot.log()}")
