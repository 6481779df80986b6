"""A real DNSSEC world on loopback: NSD (Debian package nsd) serves zones that BIND's
dnssec-signzone (bind9-utils) signed, and Unbound (unbound) validates them with their trust
anchors, as the resolver vsmtp asks (`dns.dnssec`). Each in a temporary directory with its
own configuration, on 127.0.0.1 high ports, stopped by its PID.

Zones not listed as signed are served unsigned and have no trust anchor: Unbound answers
them as insecure. `corrupt` names RRsets whose signature is damaged after signing: Unbound
finds them bogus and answers SERVFAIL. Unbound refuses every name outside the zones, so it
never asks anything beyond loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.resolver
import pytest

PROGRAMS = ("nsd", "unbound", "dnssec-keygen", "dnssec-signzone")


def missing() -> str:
    """Why the world cannot run here ("" : it can)."""
    absent = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    return f"not installed: {', '.join(absent)} (Debian packages nsd, unbound, bind9-utils)" if absent else ""


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


LIFETIME = 1800  # seconds a server of these lives at most, whatever happens to the tests


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux's
    PR_SET_PDEATHSIG), so that a killed test run leaves no server behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class ValidatingDns:
    def __init__(self, directory: Path, zones: dict[str, str], *, signed: set[str], corrupt: tuple[tuple[str, str], ...] = ()) -> None:
        self.directory = directory
        self.zones = zones  # origin ("dane.test") -> zone text (relative names allowed, $TTL given)
        self.signed = signed
        self.corrupt = corrupt  # (owner name, type) whose RRSIG is damaged
        self.nsd_port = free_port()
        self.port = free_port()
        self.host = "127.0.0.1"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> ValidatingDns:
        why = missing()
        if why:
            pytest.skip(why)
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()

    # -- the zones ---------------------------------------------------------------------

    def _zone_file(self, origin: str, text: str) -> tuple[str, str]:
        """The file NSD serves for `origin`, and its trust anchor (a DNSKEY line) if signed."""
        source = self.directory / f"{origin}.zone"
        source.write_text(text)
        if origin not in self.signed:
            return source.name, ""
        keygen = [_program("dnssec-keygen"), "-q", "-K", str(self.directory), "-a", "ECDSAP256SHA256", "-f", "KSK", "-n", "ZONE", origin]
        key = subprocess.run(keygen, check=True, capture_output=True, text=True).stdout.strip()
        signed = self.directory / f"{origin}.signed"
        sign = [_program("dnssec-signzone"), "-q", "-z", "-S", "-K", str(self.directory), "-O", "full", "-o", origin]
        subprocess.run([*sign, "-f", str(signed), str(source)], check=True, capture_output=True, cwd=self.directory)
        self._damage(signed)
        anchor = next(line for line in (self.directory / f"{key}.key").read_text().splitlines() if " DNSKEY " in line)
        return signed.name, anchor

    def _damage(self, signed: Path) -> None:
        lines = signed.read_text().splitlines()
        for owner, rdtype in self.corrupt:
            for index, line in enumerate(lines):
                fields = line.split()
                if len(fields) > 5 and fields[0].rstrip(".") == owner.rstrip(".") and fields[3] == "RRSIG" and fields[4] == rdtype:
                    signature = fields[-1]
                    middle = len(signature) // 2
                    flipped = "A" if signature[middle] != "A" else "B"
                    lines[index] = line[: len(line) - len(signature)] + signature[:middle] + flipped + signature[middle + 1 :]
        signed.write_text("\n".join(lines) + "\n")

    # -- the servers -------------------------------------------------------------------

    def _start(self) -> None:
        d = self.directory
        files, anchors = {}, []
        for origin, text in self.zones.items():
            files[origin], anchor = self._zone_file(origin, text)
            if anchor:
                anchors.append(anchor)
        (d / "anchors").write_text("\n".join(anchors) + "\n")
        zones = "".join(f"zone:\n    name: {origin}\n    zonefile: {name}\n" for origin, name in files.items())
        (d / "nsd.conf").write_text(
            f"""server:
    ip-address: 127.0.0.1@{self.nsd_port}
    port: {self.nsd_port}
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    server-count: 1
    verbosity: 1
remote-control:
    control-enable: no
{zones}"""
        )
        stubs = "".join(f'stub-zone:\n    name: "{origin}"\n    stub-addr: 127.0.0.1@{self.nsd_port}\n' for origin in self.zones)
        transparent = "".join(f'    local-zone: "{origin}." transparent\n' for origin in self.zones)
        tests = {origin.rsplit(".", 1)[-1] for origin in self.zones}
        nodefault = "".join(f'    local-zone: "{tld}." nodefault\n' for tld in tests)  # Unbound answers test. itself otherwise
        (d / "unbound.conf").write_text(
            f"""server:
    interface: 127.0.0.1@{self.port}
    port: {self.port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: ""
    use-syslog: no
    logfile: "{d}/unbound.log"
    verbosity: 1
    val-log-level: 2
    do-daemonize: no
    num-threads: 1
    so-reuseport: no
    outgoing-interface: 127.0.0.1
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    trust-anchor-file: "{d}/anchors"
    local-zone: "." refuse
{nodefault}{transparent}{stubs}remote-control:
    control-enable: no
"""
        )
        for argv, log in (
            ([_program("nsd"), "-d", "-c", str(d / "nsd.conf")], "nsd.out"),
            ([_program("unbound"), "-d", "-c", str(d / "unbound.conf")], "unbound.out"),
        ):
            with (d / log).open("wb") as out:  # bounded: gone with the tests' process, or after LIFETIME anyway
                bounded = ["timeout", str(LIFETIME), *argv]
                self._procs.append(subprocess.Popen(bounded, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent))
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        """Until Unbound answers for every zone (through NSD)."""
        ask = dns.resolver.Resolver(configure=False)
        ask.nameservers, ask.port, ask.lifetime = [self.host], self.port, 1
        deadline = time.monotonic() + timeout
        waiting = set(self.zones)
        while waiting:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: see {self.directory}")
            for origin in list(waiting):
                try:
                    ask.resolve(origin, "SOA")
                    waiting.discard(origin)
                except dns.exception.DNSException:
                    pass
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"the DNSSEC servers did not answer for {sorted(waiting)} within {timeout:.0f}s: see {self.directory}")
            if waiting:
                time.sleep(0.1)
