"""OpenDKIM (Debian's opendkim and miltertest), run privately in a temporary directory, as
the independent implementation vsmtp's signatures are checked against:

- verify: `opendkim -t FILE`, its key lookups sent by its libunbound to the tests' DNS
  server on loopback (an unbound configuration of our own);
- sign: the opendkim milter on a loopback port, fed one message by miltertest (a Lua
  script), stopped by its PID; the DKIM-Signature it adds is returned.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ..dnsserver import DnsServer

SIGN_LUA = """
local conn = mt.connect(os.getenv("MILTER_SOCKET"), 80, 0.25)
if conn == nil then error("cannot connect to the milter") end
if mt.conninfo(conn, "localhost", "127.0.0.1") ~= nil then error("conninfo") end
if mt.mailfrom(conn, os.getenv("MAIL_FROM")) ~= nil then error("mailfrom") end
if mt.rcptto(conn, os.getenv("RCPT_TO")) ~= nil then error("rcptto") end
local f = io.open(os.getenv("MESSAGE"), "rb")
local text = f:read("*a")
f:close()
local head, body = string.match(text, "^(.-)\\r\\n\\r\\n(.*)$")
for line in string.gmatch(head .. "\\r\\n", "(.-)\\r\\n") do
  local name, value = string.match(line, "^([^:]+):%s?(.*)$")
  if mt.header(conn, name, value) ~= nil then error("header " .. name) end
end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, body) ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
local sig = mt.getheader(conn, "DKIM-Signature", 0)
if sig == nil then error("no DKIM-Signature added") end
io.write(sig)
mt.disconnect(conn)
"""


def needed() -> None:
    for program in ("opendkim", "miltertest"):
        if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists() and not Path(f"/usr/bin/{program}").exists():
            pytest.skip(f"{program} is not installed (Debian packages opendkim, miltertest: tools/system-packages, as root)")


def _program(name: str) -> str:
    return shutil.which(name) or next(p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists())


def verify(message: bytes, workdir: Path, dns: DnsServer) -> str:
    """OpenDKIM's verdict on `message`'s (first) signature: its output line."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "unbound.conf").write_text(
        "server:\n"
        "    do-not-query-localhost: no\n"
        '    local-zone: "test." nodefault\n'  # unbound answers the special-use name test. itself
        '    domain-insecure: "test."\n'
        'forward-zone:\n    name: "test."\n'
        f"    forward-addr: {dns.host}@{dns.port}\n"
    )
    (workdir / "verify.conf").write_text(f"Mode v\nSyslog no\nResolverConfiguration {workdir / 'unbound.conf'}\n")
    path = workdir / "message.eml"
    path.write_bytes(message)
    done = subprocess.run(
        [_program("opendkim"), "-x", str(workdir / "verify.conf"), "-t", str(path)], capture_output=True, text=True, timeout=60
    )
    return (done.stdout + done.stderr).strip()


def sign(message: bytes, *, domain: str, selector: str, key: Path, algorithm: str, workdir: Path) -> bytes:
    """`message` with the DKIM-Signature the opendkim milter made for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (workdir / "sign.conf").write_text(
        f"Mode s\nSyslog no\nSocket inet:{port}@127.0.0.1\nDomain {domain}\nSelector {selector}\nKeyFile {key}\n"
        f"Canonicalization relaxed/relaxed\nSignatureAlgorithm {algorithm}\nInternalHosts 127.0.0.1\n"
        "RequireSafeKeys false\n"  # the key is under /tmp, which everyone may write
    )
    (workdir / "sign.lua").write_text(SIGN_LUA)
    (workdir / "in.eml").write_bytes(message)
    milter = subprocess.Popen(
        [_program("opendkim"), "-f", "-x", str(workdir / "sign.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        env = {**os.environ, "MILTER_SOCKET": f"inet:{port}@127.0.0.1", "MAIL_FROM": f"a@{domain}", "RCPT_TO": "bob@localhost"}
        env["MESSAGE"] = str(workdir / "in.eml")
        done = subprocess.run([_program("miltertest"), "-s", str(workdir / "sign.lua")], env=env, capture_output=True, timeout=60)
    finally:
        milter.terminate()  # by its PID
        output, _ = milter.communicate(timeout=20)
    assert done.returncode == 0, (done.stdout, done.stderr, output)
    value = done.stdout.decode().strip().replace("\r\n", "\n").replace("\n", "\r\n")
    return b"DKIM-Signature: " + value.encode() + b"\r\n" + message
