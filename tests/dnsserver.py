"""A small authoritative DNS server on loopback, answering from a zone file (tests/remote/test.zone).

Built on dnspython's zone and message classes; UDP only (answers here are small), in a
thread so that trio and blocking tests can both use it. Enough for MX, A, AAAA, TXT,
NXDOMAIN and NODATA, which is what mail routing and sender authentication ask. Names under
a `silent` suffix are never answered: a server that is down, for timeouts.
"""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.zone


class DnsServer:
    def __init__(self, zone_text: str, origin: str, *, host: str = "127.0.0.1", port: int = 0, silent: tuple[str, ...] = ()) -> None:
        self.zone = dns.zone.from_text(zone_text, origin=origin, relativize=False)
        self.silent = tuple(dns.name.from_text(name) for name in silent)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.queries: list[tuple[str, str]] = []  # (name, type) asked, for tests to check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @classmethod
    def from_file(cls, path: Path, origin: str) -> DnsServer:
        return cls(path.read_text(), origin)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():  # bounded: stops within 0.1 s of __exit__
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            data, peer = self.sock.recvfrom(4096)
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            if any(q.name.is_subdomain(name) for q in query.question for name in self.silent):
                self.queries.append((query.question[0].name.to_text(), "(no answer)"))
                continue
            self.sock.sendto(self.answer(query).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
            if not question.name.is_subdomain(self.zone.origin):
                response.set_rcode(dns.rcode.REFUSED)
                continue
            node = self.zone.get_node(question.name)
            soa = self.zone.find_rrset(self.zone.origin, dns.rdatatype.SOA)
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(soa)
                continue
            rdataset = node.get_rdataset(question.rdclass, question.rdtype)
            if rdataset is None:
                response.authority.append(soa)  # NODATA: the name exists, not this type
                continue
            rrset = response.get_rrset(response.answer, question.name, question.rdclass, question.rdtype, create=True)
            assert rrset is not None
            rrset.update(rdataset)
        return response
