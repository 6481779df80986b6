"""The SMTP server's states and TRANSITIONS: the only home of legal moves.

TRANSITIONS[state][EventType] = (state after a positive reply, state after a negative one).
A command missing from its state's row is out of sequence: the connection answers it with
503 5.5.1 itself and stays where it is. A 421 reply always closes (RFC 5321 3.8).

AUTH is the one exchange of more than one step: a 334 reply to AUTH or to a response leads
to State.AUTH, where the next line is the response; any other reply (235, a failure) ends it
in READY (ServerConnection.send).
"""

from __future__ import annotations

import enum

from . import events as ev
from . import replies
from .replies import Reply


class State(enum.Enum):
    CONNECTED = "connected"  # greeting not yet sent
    GREETED = "greeted"  # waiting for HELO/EHLO
    READY = "ready"  # HELO/EHLO done, no transaction open
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # receiving message content, until CRLF.CRLF
    BDAT = "bdat"  # a BDAT chunk (not LAST) was accepted: only BDAT may carry on (RFC 3030)
    AUTH = "auth"  # a 334 challenge was sent: the next line is the client's response (RFC 4954)
    CLOSED = "closed"  # QUIT answered, 421 sent, or peer gone


S = State


def _row(state: State, **moves: tuple[State, State]) -> dict[type[ev.Event], tuple[State, State]]:
    stay = (state, state)
    row: dict[type[ev.Event], tuple[State, State]] = {
        ev.Noop: stay,
        ev.Vrfy: stay,
        ev.Expn: stay,
        ev.Help: stay,
        ev.Quit: (S.CLOSED, S.CLOSED),
        ev.Invalid: stay,
    }
    row.update({getattr(ev, name): move for name, move in moves.items()})
    return row


TRANSITIONS: dict[State, dict[type[ev.Event], tuple[State, State]]] = {
    S.CONNECTED: {},  # only the greeting, sent with send()
    S.GREETED: _row(
        S.GREETED,
        Helo=(S.READY, S.GREETED),
        Ehlo=(S.READY, S.GREETED),
        Rset=(S.GREETED, S.GREETED),
        StartTls=(S.GREETED, S.GREETED),
    ),
    S.READY: _row(
        S.READY,
        Helo=(S.READY, S.READY),
        Ehlo=(S.READY, S.READY),
        Rset=(S.READY, S.READY),
        MailFrom=(S.MAIL, S.READY),
        StartTls=(S.GREETED, S.READY),  # RFC 3207 4.2: forget everything, start again at EHLO
        Auth=(S.AUTH, S.READY),  # only 334 goes on to AUTH (ServerConnection.send)
    ),
    # Every line is the response to the challenge; one refused (too long, not base64) ends the exchange.
    S.AUTH: {ev.AuthResponse: (S.AUTH, S.READY), ev.Invalid: (S.READY, S.READY)},
    S.MAIL: _row(
        S.MAIL,
        Helo=(S.READY, S.MAIL),  # a new HELO/EHLO aborts the transaction (RFC 5321 4.1.4)
        Ehlo=(S.READY, S.MAIL),
        Rset=(S.READY, S.READY),
        RcptTo=(S.RCPT, S.MAIL),
    ),
    S.RCPT: _row(
        S.RCPT,
        Helo=(S.READY, S.RCPT),
        Ehlo=(S.READY, S.RCPT),
        Rset=(S.READY, S.READY),
        RcptTo=(S.RCPT, S.RCPT),
        Data=(S.DATA, S.RCPT),
        # RFC 3030: a refused chunk voids the transaction; the client must RSET or start over.
        Bdat=(S.BDAT, S.READY),
        BdatLast=(S.READY, S.READY),
    ),
    S.BDAT: _row(
        S.BDAT,
        Rset=(S.READY, S.READY),
        Bdat=(S.BDAT, S.READY),
        BdatLast=(S.READY, S.READY),
    ),
    # Whatever the outcome of a message, the transaction is over (RFC 5321 4.1.1.4).
    S.DATA: {ev.DataEnd: (S.READY, S.READY)},
    S.CLOSED: {},
}


def out_of_sequence_reply(state: State, kind: type[ev.Event]) -> Reply:
    """The 503 that explains why a `kind` command is not legal in `state` (Postfix's words)."""
    if state is S.GREETED and kind in (ev.MailFrom, ev.RcptTo, ev.Data):
        return replies.NEED_HELO
    if kind is ev.MailFrom:
        return replies.NESTED_MAIL
    if kind is ev.RcptTo:
        return replies.NEED_MAIL
    if kind in (ev.Data, ev.Bdat, ev.BdatLast):
        if state is S.BDAT:
            return replies.DATA_AFTER_BDAT
        return replies.NEED_MAIL if state is S.READY else replies.NEED_RCPT
    if kind is ev.StartTls:
        return replies.STARTTLS_IN_TRANSACTION
    if kind is ev.Auth:
        return replies.NEED_EHLO if state is S.GREETED else replies.AUTH_IN_TRANSACTION
    return replies.BAD_SEQUENCE
