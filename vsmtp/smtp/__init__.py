"""Sans-IO SMTP: bytes in, events out, replies back as bytes. No trio, no sockets, no clock.

conn = ServerConnection()
wire = conn.send(replies.greeting("mx.example.org"))
conn.receive_data(peer_bytes)
event = conn.next_event()        # a command, DataChunk, DataEnd, NEED_DATA, PAUSED ...
wire = conn.send(reply)          # answer it; the reply decides the next state
"""

from __future__ import annotations

from .errors import LocalProtocolError, ProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthResponse,
    Bdat,
    BdatLast,
    ConnectionClosed,
    Data,
    DataChunk,
    DataEnd,
    Ehlo,
    Event,
    Expn,
    Helo,
    Help,
    Invalid,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rset,
    StartTls,
    Vrfy,
)
from .replies import Reply
from .server import Extensions, ServerConnection
from .states import TRANSITIONS, State

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "TRANSITIONS",
    "Auth",
    "AuthResponse",
    "Bdat",
    "BdatLast",
    "ConnectionClosed",
    "Data",
    "DataChunk",
    "DataEnd",
    "Ehlo",
    "Event",
    "Expn",
    "Extensions",
    "Helo",
    "Help",
    "Invalid",
    "LocalProtocolError",
    "MailFrom",
    "Noop",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Reply",
    "Rset",
    "ServerConnection",
    "StartTls",
    "State",
    "Vrfy",
]
