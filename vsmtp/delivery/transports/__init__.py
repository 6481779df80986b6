"""The transports, one module each, all answering delivery/transport.py's Transport: local
files (maildir.py, mbox.py, sharing local.py), SMTP (smtp.py), LMTP (lmtp.py), programs
(pipe.py), and discard and error (discard.py). `build` makes one of each, by route kind."""

from __future__ import annotations

from ..transport import Services, Transport
from .discard import Discard, Error
from .lmtp import Lmtp
from .maildir import Maildir
from .mbox import Mbox
from .pipe import Pipe
from .smtp import Smtp

KINDS = (Maildir, Mbox, Smtp, Lmtp, Pipe, Discard, Error)


def build(services: Services) -> dict[str, Transport]:
    """A transport of each kind, sharing `services`."""
    return {kind.kind: kind(services) for kind in KINDS}
