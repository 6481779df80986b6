"""AUTH (RFC 4954) in the sans-IO server, and the SASL mechanisms PLAIN (RFC 4616) and LOGIN."""

from __future__ import annotations

import base64

import pytest

from vsmtp.smtp import Auth, AuthResponse, Extensions, Invalid, MailFrom, ServerConnection, State, replies, sasl
from vsmtp.smtp import events as ev

from .helpers import MODES, drain, run
from .helpers import Transcript as _Transcript

OFFERED = Extensions(auth=("PLAIN", "LOGIN"))


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def conn(*, tls: bool = True, extensions: Extensions = OFFERED) -> ServerConnection:
    return ServerConnection(extensions=extensions, tls=tls)


def test_auth_is_advertised_only_once_tls_is_active() -> None:
    assert "AUTH PLAIN LOGIN" in OFFERED.keywords(tls_active=True)
    assert not any(word.startswith("AUTH") for word in OFFERED.keywords(tls_active=False))
    assert not any(word.startswith("AUTH") for word in Extensions().keywords(tls_active=True))


def test_auth_in_clear_is_refused_before_anything_is_decoded() -> None:
    t = run(b"EHLO c\r\nAUTH PLAIN " + b64(b"\0u\0p") + b"\r\n", conn=conn(tls=False))
    assert isinstance(t.events[-1], Invalid)
    assert t.replies[-1] == "538 5.7.11 Encryption required for requested authentication mechanism"


def test_auth_without_mechanisms_is_not_enabled() -> None:
    t = run(b"EHLO c\r\nAUTH PLAIN\r\n", conn=conn(extensions=Extensions()))
    assert t.replies[-1] == "503 5.5.1 Error: authentication not enabled"


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"AUTH PLAIN\r\n", "503 5.5.1 Error: send EHLO first"),
        (b"HELO c\r\nAUTH PLAIN\r\n", "503 5.5.1 Error: send EHLO first"),
        (b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nAUTH PLAIN\r\n", "503 5.5.1 Error: MAIL transaction in progress"),
        (b"EHLO c\r\nAUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type"),
        (b"EHLO c\r\nAUTH PLAIN not*base64\r\n", "501 5.5.2 Cannot decode response"),
        (b"EHLO c\r\nAUTH\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"EHLO c\r\nAUTH PLAIN a b\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    ],
)
def test_auth_refusals(script: bytes, reply: str) -> None:
    t = run(script, conn=conn())
    assert t.replies[-1] == reply


@pytest.mark.parametrize("mode", MODES)
def test_an_initial_response_is_decoded(mode: str) -> None:
    t = run(b"EHLO c\r\nAUTH plain " + b64(b"\0alice\0secret") + b"\r\nAUTH LOGIN =\r\n", conn=conn(), mode=mode)
    assert Auth(mechanism="PLAIN", initial=b"\0alice\0secret") in t.events
    assert Auth(mechanism="LOGIN", initial=b"") in t.events  # "=" is an empty initial response


class Scripted:
    """Drives a connection, answering AUTH and responses with the replies given, in order."""

    def __init__(self, *answers: replies.Reply) -> None:
        self.conn = conn()
        self.answers = list(answers)
        self.transcript = _Transcript()
        self.transcript.output += self.conn.send(replies.greeting("mx.test"))

    def feed(self, data: bytes) -> list[object]:
        self.conn.receive_data(data)
        before = len(self.transcript.events)
        while True:
            event = self.conn.next_event()
            if event is ev.NEED_DATA or isinstance(event, ev.ConnectionClosed):
                return self.transcript.events[before:]
            self.transcript.events.append(event)
            if isinstance(event, Auth | AuthResponse):
                reply = self.answers.pop(0)
            elif isinstance(event, Invalid):
                reply = event.reply
            elif isinstance(event, ev.Ehlo):
                reply = replies.ehlo("mx.test", "c", [])
            else:
                reply = replies.OK
            self.transcript.output += self.conn.send(reply)


def test_a_334_challenge_reads_the_next_line_as_the_response_whatever_it_says() -> None:
    s = Scripted(replies.challenge(b"Username:"), replies.challenge(b"Password:"), replies.AUTH_OK)
    s.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    assert s.conn.state is State.AUTH
    assert s.feed(b"UVVJVA==\r\n") == [AuthResponse(data=b"QUIT")]
    assert s.feed(b"TUFJTA==\r\n") == [AuthResponse(data=b"MAIL")]
    assert s.conn.state is State.READY and s.conn.authenticated
    assert s.feed(b"AUTH PLAIN\r\n") == [Invalid(line=b"AUTH PLAIN", reply=replies.ALREADY_AUTHENTICATED)]
    assert s.feed(b"MAIL FROM:<a@b.c> AUTH=<>\r\n") == [MailFrom(reverse_path="a@b.c", params={"AUTH": "<>"})]


def test_a_cancel_or_a_bad_response_ends_the_exchange() -> None:
    s = Scripted(replies.challenge(b""), replies.AUTH_CANCELLED, replies.challenge(b""))
    s.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
    assert s.feed(b"*\r\n") == [AuthResponse(cancelled=True)]
    assert s.conn.state is State.READY and not s.conn.authenticated
    s.feed(b"AUTH PLAIN\r\n")
    [refused] = s.feed(b"%%%\r\n")
    assert isinstance(refused, Invalid) and refused.reply is replies.CANNOT_DECODE
    assert s.conn.state is State.READY
    assert s.feed(b"NOOP\r\n") == [ev.Noop()]  # a command again, not a response


def test_a_failed_auth_may_be_tried_again() -> None:
    s = Scripted(replies.AUTH_FAILED, replies.AUTH_OK)
    s.feed(b"EHLO c\r\nAUTH PLAIN " + b64(b"\0u\0wrong") + b"\r\n")
    assert s.conn.state is State.READY and not s.conn.authenticated
    s.feed(b"AUTH PLAIN " + b64(b"\0u\0right") + b"\r\n")
    assert s.conn.authenticated


def test_starttls_forgets_an_authentication() -> None:
    c = conn(tls=False, extensions=Extensions(auth=("PLAIN",), starttls=True))
    c.authenticated = True  # as if: the drop happens whatever the state said
    t = _Transcript()
    t.output += c.send(replies.greeting("mx.test"))
    c.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    drain(c, t)
    assert c.tls and not c.authenticated


def test_the_mail_auth_parameter_is_only_known_where_auth_is_offered() -> None:
    t = run(b"EHLO c\r\nMAIL FROM:<a@b.c> AUTH=<>\r\n", conn=ServerConnection())
    assert t.replies[-1] == "555 5.5.4 Unsupported option: AUTH"
    t = run(b"EHLO c\r\nMAIL FROM:<a@b.c> AUTH=a b\r\n", conn=conn())
    assert t.replies[-1].startswith("555")  # "b" is a parameter of its own
    t = run(b"EHLO c\r\nMAIL FROM:<a@b.c> AUTH\r\n", conn=conn())
    assert t.replies[-1] == "501 5.5.4 Bad parameter: AUTH needs <> or an address"


# -- the mechanisms -------------------------------------------------------------------------


def test_plain_with_and_without_an_initial_response() -> None:
    assert sasl.start("PLAIN").step(b"\0alice\0secret") == sasl.Credentials("alice", "secret")
    exchange = sasl.start("PLAIN")
    assert exchange.step(None) == b""
    assert exchange.step(b"alice\0alice\0s\xc3\xa9cret") == sasl.Credentials("alice", "sécret")  # authzid = authcid


@pytest.mark.parametrize(
    "response",
    [b"alice\0secret", b"bob\0alice\0secret", b"\0\0secret", b"\0alice\0", b"\0al\xffice\0secret", b"\0alice\0" + b"x" * 300],
)
def test_plain_refuses_what_it_cannot_take(response: bytes) -> None:
    with pytest.raises(sasl.SaslError):
        sasl.start("PLAIN").step(response)


def test_login_asks_for_the_user_name_unless_given() -> None:
    exchange = sasl.start("LOGIN")
    assert exchange.step(None) == b"Username:"
    assert exchange.step(b"alice") == b"Password:"
    assert exchange.step(b"secret") == sasl.Credentials("alice", "secret")
    exchange = sasl.start("LOGIN")
    assert exchange.step(b"alice") == b"Password:"  # AUTH LOGIN <user> (RFC 4954 initial response)
    with pytest.raises(sasl.SaslError):
        exchange.step(b"")


def test_the_configuration_offers_only_mechanisms_built_here() -> None:
    import typing

    from vsmtp.config import AuthConfig

    literal = typing.get_args(typing.get_type_hints(AuthConfig)["mechanisms"])[0]  # tuple[Literal[...], ...]
    assert set(typing.get_args(literal)) == set(sasl.MECHANISMS)
