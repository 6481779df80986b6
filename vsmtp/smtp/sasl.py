"""SASL mechanisms for AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN (the draft Outlook and
most clients still speak). Pure: responses in, a challenge or the credentials out. Which
credentials are good is not decided here.

    exchange = sasl.start("LOGIN")
    step = exchange.step(initial)     # bytes: send as a 334 challenge; Credentials: check them
    step = exchange.step(response)    # ... until Credentials, or SaslError (501)
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FIELD = 255  # octets of a user name or a password (RFC 4616 2 lets a server set a limit)


class SaslError(ValueError):
    """A response that does not follow its mechanism: the exchange fails (501 5.5.2)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = ""


class Exchange:
    """One AUTH exchange in progress."""

    def step(self, response: bytes | None) -> bytes | Credentials:
        """The client's next response (None: AUTH came without an initial response)."""
        raise NotImplementedError


class Plain(Exchange):
    """RFC 4616: one response, authzid NUL authcid NUL password, in UTF-8."""

    def step(self, response: bytes | None) -> bytes | Credentials:
        if response is None:
            return b""  # an empty challenge asks for the response
        fields = response.split(b"\0")
        if len(fields) != 3:
            raise SaslError("PLAIN response is authzid NUL authcid NUL password")
        authzid, username, password = (_text(f) for f in fields)
        if not username or not password:
            raise SaslError("PLAIN response without a user name or a password")
        if authzid and authzid != username:
            # Acting for someone else (a proxy authorization) is not offered: a user is who they log in as.
            raise SaslError("PLAIN authorization identity differs from the user name")
        return Credentials(username, password)


class Login(Exchange):
    """The LOGIN mechanism: "Username:" then "Password:", each answered in base64."""

    def __init__(self) -> None:
        self._username: str | None = None
        self._asked = False

    def step(self, response: bytes | None) -> bytes | Credentials:
        if self._username is None:
            if response is None or (not self._asked and response == b""):
                self._asked = True
                return b"Username:"
            self._username = _text(response)
            if not self._username:
                raise SaslError("LOGIN without a user name")
            return b"Password:"
        if not response:
            raise SaslError("LOGIN without a password")
        return Credentials(self._username, _text(response))


_EXCHANGES: dict[str, type[Exchange]] = {"PLAIN": Plain, "LOGIN": Login}
MECHANISMS = tuple(_EXCHANGES)  # what `[auth] mechanisms` may name


def start(mechanism: str) -> Exchange:
    """The exchange for `mechanism` (one of MECHANISMS, upper case)."""
    return _EXCHANGES[mechanism]()


def _text(field: bytes) -> str:
    if len(field) > MAX_FIELD:
        raise SaslError(f"a field longer than {MAX_FIELD} octets")
    try:
        text = field.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslError("not UTF-8") from exc
    if any(c in text for c in "\0\r\n"):
        raise SaslError("control characters in a field")
    return text
