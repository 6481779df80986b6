"""LmtpConnection: the client side of LMTP (RFC 2033) as a pure state machine, on
ClientConnection (client.py). The differences from SMTP, and all that is here:

- LHLO instead of EHLO or HELO (RFC 2033 4.1);
- after the message, one reply per recipient the server accepted, in RCPT order (4.2): a
  delivery can succeed for some recipients and fail for others;
- no STARTTLS or AUTH here: LMTP runs on loopback or a unix socket, to a server we trust.
"""

from __future__ import annotations

from .client import ClientConnection, State
from .errors import LocalProtocolError


class LmtpConnection(ClientConnection):
    def lhlo(self, name: str) -> bytes:
        self._expect(State.HELLO, "LHLO")
        return self._send("LHLO", f"LHLO {name}\r\n".encode())

    def ehlo(self, name: str) -> bytes:
        raise LocalProtocolError("LMTP greets with LHLO")

    def helo(self, name: str) -> bytes:
        raise LocalProtocolError("LMTP greets with LHLO")

    def starttls(self) -> bytes:
        raise LocalProtocolError("no STARTTLS over LMTP here")

    def message(self, body: bytes) -> bytes:
        """The message, once DATA took 354; a reply then comes for each accepted recipient."""
        if self.state is State.BODY and not self.recipients_accepted:
            raise LocalProtocolError("the message after DATA with no recipient accepted")
        data = super().message(body)
        self._awaiting.extend(["MESSAGE"] * (self.recipients_accepted - 1))
        return data
