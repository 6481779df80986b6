"""vsmtp against Postfix, side by side in one run: SMTP in, Maildir out, nothing lost.

    make bench                       # every scenario, once
    .venv/bin/python tools/bench.py --quick
    .venv/bin/python tools/bench.py --sizes 1 --sessions 50 --modes persistent --repeat 3
    .venv/bin/python tools/bench.py --no-accept-only   # without the rows accepting alone (Postfix: hold queue)
    .venv/bin/python tools/bench.py --recipients 10    # 10 recipients a message (smtp-source -r)
    .venv/bin/python tools/bench.py --workers 1,2      # a row per number of vsmtp's receiving processes
    .venv/bin/python tools/bench.py --baseline /tmp/old/.venv/bin/vsmtp   # another build in the same repetitions

For each scenario (message size x concurrent sessions x persistent or one connection per
message) it starts a fresh Postfix instance and a fresh vsmtp, both on loopback, both
delivering to a Maildir on the same disk with fsync as shipped, sends the same load with
Postfix's `smtp-source`, and times from the first connection until the last message is a
file in the Maildir. It then checks that exactly the messages sent were delivered.

Printed per scenario: msgs/s for each side and the ratio (vsmtp / Postfix; above 1 is
vsmtp faster; a message with several recipients counts once, and every copy must arrive);
vsmtp's own CPU time per message and peak memory (RSS high-water mark); and the whole
machine's CPU time per message on each side (load generator included), which is how
Postfix's many short-lived processes can be compared at all. Each scenario runs again
accepting only (unless --no-accept-only): vsmtp with delivery off, Postfix with every message put
in its hold queue (smtpd_data_restrictions = check_client_access static:HOLD), the time
until the last 250, every message counted in the journal or the hold queue. A probe session
beside the load times each of its messages from the end of data to the 250 (p50, p99).

Needs root (Postfix's master runs as root) and the Debian package `postfix`
(tools/system-packages installs it). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VSMTP = Path(sys.executable).with_name("vsmtp")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
RECIPIENT = "bob@bench.test"
SENDER = "load@client.test"
DELIVERY_TIMEOUT = 300.0  # seconds a scenario may take to deliver everything before it counts as a loss


@dataclass(frozen=True)
class Scenario:
    size_kib: int
    sessions: int
    persistent: bool
    messages: int
    auth: Authenticated | None = None  # SPF, DKIM and DMARC on vsmtp's side, a DKIM-signed message from a stranger
    otlp: str = ""  # traces and metrics exported over OTLP/gRPC to this endpoint (Collector: tests/otlp.py, a process of its own)
    hold: bool = False  # accept only: vsmtp's delivery off, Postfix's smtpd puts every message in the hold queue
    recipients: int = 1  # per message (smtp-source -r: 0bob, 1bob, ...)
    workers: int = 0  # vsmtp's receiving processes (0: its default, one per core)

    def __str__(self) -> str:
        mode = "persistent" if self.persistent else "conn/msg"
        extras = (" +auth" if self.auth else "") + (" +otlp" if self.otlp else "") + (" hold" if self.hold else "")
        extras += f" r={self.recipients}" if self.recipients > 1 else ""
        extras += f" w={self.workers}" if self.workers else ""
        return f"{self.size_kib:>3} KiB  c={self.sessions:<3} {mode:<10}{extras}"

    @property
    def copies(self) -> int:
        """What must arrive: a file per recipient per message (held: a message each)."""
        return self.messages * (1 if self.hold else self.recipients)

    def vsmtp_config(self) -> str:
        extra = self.auth.vsmtp_config() if self.auth is not None else ""
        if self.otlp:
            extra += f'[telemetry]\nexporter = "otlp"\n[telemetry.otlp]\nendpoint = "{self.otlp}"\n'
        if self.hold:
            extra += "[delivery]\nenabled = false\n"
        return extra


AUTH_SENDER = "news@bench-sender.test"


@dataclass(frozen=True)
class Authenticated:
    """The sender authentication scenario: a DNS server on loopback publishing the sender's
    SPF, DKIM key and DMARC policy (tests/dnsserver.py), and a message signed with that key
    for each size. vsmtp checks all three for every message (its resolver caches the answers);
    Postfix, as shipped, checks none: the ratio says what the checks cost."""

    nameserver: str
    messages: dict[int, Path]  # size in KiB -> the signed message (LF line ends: smtp-source -F adds CR)

    @classmethod
    def start(cls, workdir: Path, sizes: list[int], stack: contextlib.ExitStack) -> Authenticated:
        sys.path.insert(0, str(ROOT))
        from tests.dnsserver import DnsServer
        from vsmtp.auth import dkim
        from vsmtp.config import SigningKeyConfig

        workdir.mkdir(parents=True, exist_ok=True)
        pem, record = dkim.generate("rsa-sha256")
        key = workdir / "bench.key"
        key.write_bytes(pem)
        strings = " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))
        zone = (
            "$ORIGIN test.\n$TTL 3600\n@ SOA ns.test. h.test. 1 3600 600 86400 3600\n@ NS ns.test.\n"
            'bench-sender TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'
            '_dmarc.bench-sender TXT "v=DMARC1; p=reject"\n'
            f"s1._domainkey.bench-sender TXT {strings}\n"
        )
        server = stack.enter_context(DnsServer(zone, "test."))
        signer = dkim.Signer(
            [dkim.SigningKey.load(SigningKeyConfig(domain="bench-sender.test", selector="s1", key=str(key)))],
            headers=("from", "to", "subject", "date", "message-id"),
            oversign=("from",),
        )
        messages = {}
        for size in sizes:
            line = b"x" * 76 + b"\r\n"
            body = line * max(1, size * 1024 // len(line))
            raw = (
                f"From: Bench <{AUTH_SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n"
                "Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@bench-sender.test>\r\n\r\n"
            ).encode() + body
            signed = signer.sign(raw, "bench-sender.test") + raw
            path = workdir / f"message-{size}.eml"
            path.write_bytes(signed.replace(b"\r\n", b"\n"))
            messages[size] = path
        return cls(nameserver=f"{server.host}:{server.port}", messages=messages)

    def vsmtp_config(self) -> str:
        # A stranger's 50 sessions and the latency probe come from one address: over the
        # per-address limit (50), which Postfix does not apply to its mynetworks (loopback).
        return (
            f'[relay]\nnetworks = []\n[dns]\nnameservers = ["{self.nameserver}"]\n'
            '[spf]\nmode = "tag"\n[dmarc]\nmode = "tag"\n[dkim]\nverify = true\n[limits]\nmax_connections_per_ip = 100\n'
        )


@dataclass
class Result:
    seconds: float  # first connection to last Maildir file
    accept_seconds: float  # first connection to smtp-source's exit (every 250 received)
    delivered: int
    machine_cpu: float  # CPU seconds of the whole machine during the run
    server_cpu: float | None = None  # vsmtp's own CPU seconds (None for Postfix: many processes)
    peak_rss_kib: int | None = None
    peak_private_kib: int = 0  # the largest sum of the processes' own memory seen during the run (MemorySampler)

    messages: int = 0  # sent (with several recipients, `delivered` counts a file for each)
    expected: int = 0  # files (or held messages) that must be there: smtp-source's and the probe's
    latencies: list[float] = field(default_factory=list)  # the probe's end of data to 250, seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def accept_rate(self) -> float:
        return self.messages / self.accept_seconds if self.accept_seconds else 0.0


# -- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded by the deadline
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.recv(512)  # the greeting: the server really answers
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout}s")


def machine_cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
    return busy / CLOCK_TICK


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (vsmtp's receiving processes)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return [pid, *children]


def process_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its children, utime + stime."""
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
    return total / CLOCK_TICK


def peak_rss_kib(pid: int) -> int:
    """The sum of the peak resident sizes of `pid` and its children."""
    return _status_kib(pid, ("VmHWM:",))


def private_kib(pid: int) -> int:
    """The memory `pid` and its children hold for themselves: the sum of their anonymous
    (RssAnon) and shared-memory (RssShmem) pages. Left out: mapped files (RssFile), which for
    vsmtp are the journal's pages in the page cache (Postfix reads its queue files with read(),
    whose pages no process counts) and the shared libraries every process maps."""
    return _status_kib(pid, ("RssAnon:", "RssShmem:"))


def _status_kib(pid: int, fields: tuple[str, ...]) -> int:
    """The sum of `fields` (kB figures of /proc/PID/status) over `pid` and its children."""
    total = 0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith(fields):
                    total += int(line.split()[1])
    return total


class MemorySampler(threading.Thread):
    """The peak of `private_kib` over a run, read every MEMORY_PAUSE seconds, the same way for
    both servers: Postfix's processes come and go (an smtpd per connection), so their peaks
    cannot be read after the run as vsmtp's VmHWM can. Bounded: it stops when told."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self.stop.wait(MEMORY_PAUSE):
            pid = self.pid()
            if pid is not None:
                self.peak = max(self.peak, private_kib(pid))

    def finish(self) -> int:
        """Stop sampling; the peak seen."""
        self.stop.set()
        self.join(10)
        return self.peak


MEMORY_PAUSE = 0.5  # seconds: reading every process's status costs the bench a few ms each time


def count_files(directory: Path) -> int:
    """Messages delivered: files in every new/ under `directory`."""
    return sum(len(os.listdir(new)) for new in directory.glob("**/new") if new.is_dir())


def smtp_source(port: int, scenario: Scenario) -> subprocess.CompletedProcess[bytes]:
    args = ["smtp-source", "-s", str(scenario.sessions), "-m", str(scenario.messages)]
    if scenario.auth is not None:
        args += ["-F", str(scenario.auth.messages[scenario.size_kib])]
    else:
        args += ["-l", str(scenario.size_kib * 1024)]
    if scenario.persistent:
        args.append("-d")
    if scenario.recipients > 1:
        args += ["-r", str(scenario.recipients)]
    sender = AUTH_SENDER if scenario.auth is not None else SENDER
    args += ["-M", "client.test", "-f", sender, "-t", RECIPIENT, f"127.0.0.1:{port}"]
    return subprocess.run(args, capture_output=True, timeout=DELIVERY_TIMEOUT, check=False)


# -- the two servers -------------------------------------------------------------------------


class Postfix:
    """A private Postfix instance (tests/postfix.py): its own config, queue and Maildir under
    `root`; with `hold`, its smtpd puts every message in the hold queue (accept only)."""

    def __init__(self, root: Path, scenario: Scenario) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.postfix import PrivatePostfix

        user, domain = RECIPIENT.split("@")
        users = [user, *(f"{i}{user}" for i in range(scenario.recipients + 1))]  # smtp-source -r: bob, 1bob, 2bob ...
        self.hold = scenario.hold
        self.instance = PrivatePostfix(root, domains={domain: users}, hostname="bench.postfix.test", port=free_port(), hold=self.hold)
        self.mail = self.instance.mail
        self.port = self.instance.port

    def start(self) -> None:
        self.instance.start()

    def stop(self) -> None:
        self.instance.stop()

    def pid(self) -> int | None:
        """Its master's, once it runs (smtpd and the other daemons are the master's children)."""
        return self.instance.master_pid()

    def count(self) -> int:
        """Messages in its hold queue (accept only), or files in its Maildirs."""
        if self.hold:
            return sum(len(files) for _, _, files in os.walk(self.instance.root / "queue" / "hold"))
        return count_files(self.mail)


class Vsmtp:
    """`vsmtp serve` with its own journal and Maildir under `root`."""

    def __init__(self, root: Path, extra_config: str = "", *, hold: bool = False, executable: Path = VSMTP) -> None:
        self.root = root
        self.executable = executable
        self.hold = hold
        self.mail = root / "mail"
        self.port = free_port()
        self.extra = extra_config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "vsmtp.toml"
        settings: dict[str, Any] = {
            "hostname": "bench.vsmtp.test",
            "listeners": [{"addresses": [f"127.0.0.1:{self.port}"]}],
            "local": {"domains": ["bench.test"]},
            "journal": {"path": str(self.root / "journal")},
            "delivery": {"maildir": f"{self.mail}/{{user}}/Maildir"},
            "tls": {"directory": str(self.root / "tls")},
        }
        for table, values in tomllib.loads(self.extra).items():
            if isinstance(values, dict):
                settings.setdefault(table, {}).update(values)
            else:
                settings[table] = values
        config.write_text(to_toml(settings))
        log = (self.root / "vsmtp.log").open("wb")
        self.proc = subprocess.Popen(
            [str(self.executable), "serve", "--config", str(config), "--log-level", "WARNING"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,  # not the checkout: its vsmtp/ would shadow a --baseline build's in the receiving processes (python -m)
        )
        wait_listening(self.port)

    def count(self) -> int:
        """Messages accepted (accept only: message.accepted in its journal), or files in its Maildirs."""
        if not self.hold:
            return count_files(self.mail)
        from vsmtp_journal import Journal

        with Journal(str(self.root / "journal"), readonly=True) as journal:
            return sum(1 for record in journal.read(0) if record.tag == "message.accepted")

    def pid(self) -> int | None:
        """The supervisor's (the receiving processes are its children)."""
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def to_toml(settings: dict[str, Any]) -> str:
    """Just enough TOML for a vsmtp configuration: scalars, lists, tables, arrays of tables."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items() if not isinstance(v, dict) and k != "listeners"]
    for k, v in settings.items():
        if k == "listeners":
            for item in v:
                lines += ["[[listeners]]", *(f"{ik} = {json.dumps(iv)}" for ik, iv in item.items())]
        elif isinstance(v, dict):
            lines += [f"[{k}]", *(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items() if not isinstance(iv, dict))]
            for ik, iv in v.items():
                if isinstance(iv, dict):  # [telemetry.otlp]
                    lines += [f"[{k}.{ik}]", *(f"{jk} = {json.dumps(jv)}" for jk, jv in iv.items())]
    return "\n".join(lines) + "\n"


# -- a scenario ------------------------------------------------------------------------------


def run_one(server: Postfix | Vsmtp, scenario: Scenario) -> Result:
    server.start()
    memory = MemorySampler(server.pid)
    memory.start()
    try:
        pid = server.pid() if isinstance(server, Vsmtp) else None
        cpu0, machine0 = (process_cpu_seconds(pid) if pid else 0.0), machine_cpu_seconds()
        probe = Probe(server.port, scenario.size_kib)
        t0 = time.monotonic()
        probe.start()
        try:
            sent = smtp_source(server.port, scenario)
        finally:
            probe.stop.set()
            probe.join(30)
        t_accept = time.monotonic() - t0
        expected = scenario.copies + probe.sent
        if sent.returncode != 0:
            raise RuntimeError(f"smtp-source failed against {type(server).__name__}: {sent.stderr.decode(errors='replace')}")
        deadline = t0 + (5.0 if scenario.hold else DELIVERY_TIMEOUT)  # held: each 250 came after its message was stored
        delivered = server.count()
        while delivered < expected and time.monotonic() < deadline:  # bounded by the deadline
            time.sleep(0.05 if scenario.hold else poll_pause(expected - delivered))
            delivered = server.count()
        seconds = t_accept if scenario.hold else time.monotonic() - t0
        machine = machine_cpu_seconds() - machine0
        result = Result(seconds=seconds, accept_seconds=t_accept, delivered=delivered, machine_cpu=machine, messages=scenario.messages)
        result.expected, result.latencies = expected, probe.latencies
        if pid:
            result.server_cpu = process_cpu_seconds(pid) - cpu0
            result.peak_rss_kib = peak_rss_kib(pid)
        time.sleep(0.2)  # anything delivered twice would show now
        result.delivered = server.count()
        result.peak_private_kib = memory.finish()
        return result
    finally:
        memory.finish()
        server.stop()


def poll_pause(left: int) -> float:
    """Seconds to wait before counting the files again. Counting lists a directory of
    thousands of entries (milliseconds of CPU on the cores the servers share): while many
    files are still to come it is done every 50 ms, and every 2 ms near the end, so that
    the count costs the server being measured little and the last file is still timed to
    a few milliseconds."""
    return min(0.05, max(0.002, left / 50_000))


class Probe(threading.Thread):
    """One more client beside smtp-source's load: a persistent session sending a message of
    the scenario's size every PROBE_PAUSE seconds, timing each from the end of its data to
    the 250 (what a sender waits for). Bounded: PROBE_MAX messages, and it stops when told."""

    def __init__(self, port: int, size_kib: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        line = b"x" * 78 + b"\r\n"
        body = line * max(1, size_kib * 1024 // len(line))
        self.message = b"From: probe@client.test\r\nTo: " + RECIPIENT.encode() + b"\r\nSubject: probe\r\n\r\n" + body + b".\r\n"
        self.stop = threading.Event()
        self.sent = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            replies = sock.makefile("rb")

            def ask(command: bytes) -> bytes:
                sock.sendall(command)
                while (reply := replies.readline())[3:4] == b"-":
                    pass  # a multiline reply: its last line counts
                return reply

            ask(b"")  # the greeting
            ask(b"EHLO probe.client.test\r\n")
            while not self.stop.is_set() and self.sent < PROBE_MAX:
                if not ask(b"MAIL FROM:<probe@client.test>\r\n").startswith(b"250"):
                    break
                if not ask(b"RCPT TO:<" + RECIPIENT.encode() + b">\r\n").startswith(b"250"):
                    break
                if not ask(b"DATA\r\n").startswith(b"354"):
                    break
                sock.sendall(self.message)
                started = time.perf_counter()
                reply = ask(b"")
                if not reply.startswith(b"250"):
                    break
                self.latencies.append(time.perf_counter() - started)
                self.sent += 1
                self.stop.wait(PROBE_PAUSE)
            with contextlib.suppress(OSError):
                ask(b"QUIT\r\n")


PROBE_PAUSE = 0.02  # seconds between the probe's messages (at most 50 a second beside the load)
PROBE_MAX = 5000
MAX_MESSAGES = 50_000  # per run, whatever the calibration says (the disk holds every copy until the next bench)


def scenarios(args: argparse.Namespace, auth: Authenticated | None, otlp: str = "") -> Iterator[Scenario]:
    for scenario in _scenarios(args, auth, otlp):
        for workers in [scenario.workers] if scenario.workers else args.workers:  # a row that names its own stays so
            yield dataclasses.replace(scenario, workers=workers)


def _scenarios(args: argparse.Namespace, auth: Authenticated | None, otlp: str = "") -> Iterator[Scenario]:
    for size in args.sizes:
        for sessions in args.sessions:
            for mode in args.modes:
                count = args.messages or (1000 if size <= 10 else 500)
                if args.quick:
                    count //= 5
                persistent = mode == "persistent"
                yield Scenario(size_kib=size, sessions=sessions, persistent=persistent, messages=count, recipients=args.recipients)
                if args.accept_only:
                    yield Scenario(size_kib=size, sessions=sessions, persistent=persistent, messages=count, hold=True)
                if auth is not None and sessions >= 50 and mode == "persistent":
                    yield Scenario(size_kib=size, sessions=sessions, persistent=True, messages=count, auth=auth)
                if otlp and sessions >= 50 and mode == "persistent" and size <= 10:
                    yield Scenario(size_kib=size, sessions=sessions, persistent=True, messages=count, otlp=otlp)
                if not args.no_extras and sessions >= 50 and mode == "persistent" and size <= 10:
                    if args.recipients == 1:  # one body, ten copies
                        yield Scenario(size_kib=size, sessions=sessions, persistent=True, messages=count, recipients=10)
                    if args.workers == [0] and (os.cpu_count() or 1) > 1:  # one receiving process: what a core gives
                        yield Scenario(size_kib=size, sessions=sessions, persistent=True, messages=count, workers=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100], help="KiB, comma separated")
    parser.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["persistent", "per-connection"])
    parser.add_argument("--messages", type=int, default=0, help="per scenario (default 1000 small, 500 large)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario and server; the median is shown")
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="at least this much load per measured run: each server's count is calibrated by a first, unmeasured run (0: no calibration)",
    )
    parser.add_argument("--quick", action="store_true", help="a fifth of the messages, no calibration")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--vsmtp-config", default="", help="extra TOML appended to vsmtp's configuration")
    parser.add_argument("--vsmtp-only", action="store_true", help="skip Postfix (for profiling; prints no ratio)")
    parser.add_argument("--no-auth", action="store_true", help="leave out the scenarios with SPF, DKIM and DMARC on")
    parser.add_argument("--no-otlp", action="store_true", help="leave out the scenario with OTLP export on")
    parser.add_argument(
        "--no-accept-only",
        dest="accept_only",
        action="store_false",
        help="leave out accepting alone (delivery off; Postfix: hold queue)",
    )
    parser.add_argument("--no-extras", action="store_true", help="leave out the 10-recipient and one-receiving-process rows")
    parser.add_argument("--recipients", type=int, default=1, help="recipients per message (smtp-source -r)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another build's vsmtp executable (a checkout of an earlier commit after `make install`), run in the same"
        " repetitions with the same counts: its ratio, and this build's throughput and CPU against it",
    )
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0],
        help="vsmtp's receiving processes, each a row (0: one per core)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds = 0.0
    if os.geteuid() != 0 or shutil.which("postfix") is None or shutil.which("smtp-source") is None:
        print("bench: needs root and Debian's postfix package (smtp-source); `make bench` installs it as root", file=sys.stderr)
        return 2
    shutil.rmtree(args.workdir, ignore_errors=True)
    spread(args.workdir)
    print(f"vsmtp against Postfix, SMTP to Maildir, {os.cpu_count()} CPUs shared with the load generator")
    print(
        f"{'scenario':<28} {'msgs pf|vs':>11} {'postfix/s':>10} {'vsmtp/s':>9} {'ratio':>6}"
        f" {'accepted/s pf|vs':>17} {'vsmtp cpu ms/msg':>17} {'vsmtp peak MiB':>15} {'private MiB pf|vs':>17}"
        f" {'machine cpu ms/msg pf|vs':>25}"
        f" {'p50 ms pf|vs':>13} {'p99 ms pf|vs':>13}  lost"
    )
    stack = contextlib.ExitStack()
    auth = None if args.no_auth else Authenticated.start(args.workdir / "auth", args.sizes, stack)
    collector = None
    if not args.no_otlp:
        collector = Collector()
        stack.callback(collector.close)
    with stack:
        return _run(args, auth, collector)


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread(workdir: Path) -> None:
    """Make `workdir` and mark it a top of directory hierarchies (chattr +T), so that ext4
    gives each run's directory a block group of its own. On ext4 without a journal, creating
    a file skips every inode of its group freed in the last minute or more (the kernel's
    recently_deleted check, one buffer lookup each): after a run that deleted thousands of
    files (Postfix's queue files, the previous bench's directories), a create in the same
    group cost this machine 0.4 to 0.9 ms of kernel CPU instead of 20 us, and the server
    measured next paid for the deletions of the one before."""
    import array
    import fcntl

    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])  # the kernel reads and writes an int
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] |= FS_TOPDIR_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
    except OSError as exc:  # not ext2/3/4: nothing to spread
        print(f"bench: cannot mark {workdir} as a top directory ({exc}); runs share the file system's inode groups", file=sys.stderr)
    finally:
        os.close(fd)


class Collector:
    """A real OTLP/gRPC endpoint in a process of its own (tests/otlp.py: it decodes what
    arrives with the official protobuf messages and counts the spans, keeping nothing), for
    the scenario with export on. A process of its own, so that its work does not hold this
    process's GIL against the probe; its CPU is printed apart from vsmtp's."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.otlp"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint:
            raise RuntimeError("the OTLP endpoint (python -m tests.otlp) did not start")

    def spans(self) -> int:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.isdigit():
            raise RuntimeError(f"the OTLP endpoint (python -m tests.otlp) stopped answering (exit status {self.proc.poll()})")
        return int(answer)

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # its end of input: it stops
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server(name: str, root: Path, scenario: Scenario, args: argparse.Namespace) -> Postfix | Vsmtp:
    """Postfix, or vsmtp ("plain": the same scenario's vsmtp without OTLP export)."""
    if name == "postfix":
        return Postfix(root, scenario)
    extra = (f"workers = {scenario.workers}\n" if scenario.workers else "") + args.vsmtp_config + scenario.vsmtp_config()
    executable = args.baseline if name == "baseline" else VSMTP
    return Vsmtp(root, extra, hold=scenario.hold, executable=executable)


def _run(args: argparse.Namespace, auth: Authenticated | None, collector: Collector | None) -> int:
    lost = 0
    for n, scenario in enumerate(scenarios(args, auth, collector.endpoint if collector else "")):
        exported: list[tuple[float, float]] = []  # per run with export: spans and collector CPU seconds, a message
        runs: dict[str, list[Result]] = {"postfix": [], "vsmtp": [], "plain": [], "baseline": []}
        names: tuple[str, ...] = ("vsmtp",) if args.vsmtp_only else ("postfix", "vsmtp")
        sized = {name: scenario for name in names}

        if args.seconds and not args.messages:  # steady state: enough messages for args.seconds of load on each side
            for name in names:
                first = run_one(server(name, args.workdir / f"{n}-calibrate-{name}", scenario, args), scenario)
                lost += first.delivered != first.expected
                wanted = min(MAX_MESSAGES, math.ceil(first.rate() * args.seconds / 100) * 100)
                sized[name] = dataclasses.replace(scenario, messages=max(scenario.messages, wanted))
        if scenario.otlp:  # export's cost: vsmtp without it, in the same repetitions, with the same count
            names, sized["plain"] = (*names, "plain"), dataclasses.replace(sized["vsmtp"], otlp="")
        if args.baseline:  # another build, in the same repetitions, with this build's count
            names, sized["baseline"] = (*names, "baseline"), sized["vsmtp"]
        for r in range(args.repeat):
            # Back to back, same load, same disk; the order turns with each repetition, so that
            # no server always runs right after the same other one (whose deletions and dirty
            # pages the disk is still working off).
            for name in names[r % len(names) :] + names[: r % len(names)]:
                before = (collector.spans(), collector.cpu()) if collector and sized[name].otlp else None
                runs[name].append(run_one(server(name, args.workdir / f"{n}-{r}-{name}", sized[name], args), sized[name]))
                if collector and before:
                    count = sized[name].messages
                    exported.append(((collector.spans() - before[0]) / count, (collector.cpu() - before[1]) / count))
        if args.vsmtp_only:
            runs["postfix"], sized["postfix"] = runs["vsmtp"], sized["vsmtp"]
        pf = sorted(runs["postfix"], key=Result.rate)[len(runs["postfix"]) // 2]
        vs = sorted(runs["vsmtp"], key=Result.rate)[len(runs["vsmtp"]) // 2]
        missing = [f"{name} {res.delivered}/{res.expected}" for name, rs in runs.items() for res in rs if res.delivered != res.expected]
        lost += len(missing)
        vs_cpu = statistics.median((res.server_cpu or 0) * 1000 / res.messages for res in runs["vsmtp"])
        counts = f"{sized['postfix'].messages}|{sized['vsmtp'].messages}"
        print(
            f"{scenario!s:<28} {counts:>11} {pf.rate():>10.0f} {vs.rate():>9.0f} {vs.rate() / pf.rate():>6.2f}"
            f" {pf.accept_rate():>8.0f}|{vs.accept_rate():<8.0f} {vs_cpu:>17.2f} {(vs.peak_rss_kib or 0) / 1024:>15.1f}"
            f" {pf.peak_private_kib / 1024:>8.0f}|{vs.peak_private_kib / 1024:<8.0f}"
            f" {pf.machine_cpu * 1000 / pf.messages:>12.2f} | {vs.machine_cpu * 1000 / vs.messages:<10.2f}"
            f" {_ms(pf, 0.5):>6}|{_ms(vs, 0.5):<6} {_ms(pf, 0.99):>6}|{_ms(vs, 0.99):<6}"
            f"  {', '.join(missing) or 'none'}",
            flush=True,
        )
        if runs["baseline"]:
            print(f"{'':<4}{baseline_line(runs['baseline'], runs['vsmtp'], pf)}", flush=True)
        if runs["plain"]:
            pairs = list(zip(runs["vsmtp"], runs["plain"], strict=True))
            ratios = paired(runs["vsmtp"], runs["plain"])
            kept = statistics.median(ratios)
            cost = statistics.median(
                ((on.server_cpu or 0) / on.messages - (off.server_cpu or 0) / off.messages) * 1000 for on, off in pairs
            )
            spans, collector_ms = (statistics.median(x[i] for x in exported) for i in (0, 1))
            print(
                f"{'':<4}export on: {kept:.2f} of the throughput without it (median of repetitions), {cost:+.2f} ms vsmtp CPU/msg;"
                f" the collector received {spans:.1f} spans/msg and used {collector_ms * 1000:.2f} ms CPU/msg;"
                f" pairs in order {_listed(ratios)}"
            )
            if spans < 1:
                print("bench: the OTLP endpoint received no spans: export is broken", file=sys.stderr)
                lost += 1
    if lost:
        print(f"bench: {lost} run(s) did not deliver exactly the messages sent", file=sys.stderr)
        return 1
    return 0


def baseline_line(baseline: list[Result], this: list[Result], postfix: Result) -> str:
    """The baseline build against Postfix and against this build, each repetition compared
    with its own twin (the runs of one repetition are back to back)."""
    base = sorted(baseline, key=Result.rate)[len(baseline) // 2]
    ratios = paired(this, baseline)
    kept = statistics.median(ratios)
    cpu = [statistics.median((res.server_cpu or 0) * 1000 / res.messages for res in runs) for runs in (baseline, this)]
    accepted = statistics.median(new.accept_rate() / old.accept_rate() for new, old in zip(this, baseline, strict=True))
    return (
        f"baseline: {base.rate():.0f} msgs/s, ratio {base.rate() / postfix.rate():.2f};"
        f" this build {kept:.2f}x its throughput ({accepted:.2f}x accepting), CPU {cpu[1]:.2f} against {cpu[0]:.2f} ms/msg"
        f" (p50 {_ms(base, 0.5)}, p99 {_ms(base, 0.99)} ms); pairs in order {_listed(ratios)}"
    )


def paired(this: list[Result], other: list[Result]) -> list[float]:
    """Each repetition's throughput of `this` over its twin's (run next to it), in the order
    the repetitions ran: their spread says how far their median can be trusted."""
    return [new.rate() / old.rate() for new, old in zip(this, other, strict=True)]


def _listed(ratios: list[float]) -> str:
    return " ".join(f"{r:.2f}" for r in ratios)


def _ms(result: Result, q: float) -> str:
    return f"{result.percentile(q) * 1000:.1f}"


if __name__ == "__main__":
    sys.exit(main())
