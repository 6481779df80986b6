"""8-bit to 7-bit conversion (mail/downgrade.py), part by part."""

from __future__ import annotations

import email
import email.policy

from vsmtp.mail.downgrade import seven_bit


def parts(message: bytes) -> list[tuple[str, bytes | None]]:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in parsed.walk() if not p.is_multipart()]


def test_a_seven_bit_message_is_left_as_it_is() -> None:
    message = b"Subject: x\r\n\r\nplain\r\n"
    assert seven_bit(message) is message


def test_text_becomes_quoted_printable_and_decodes_to_the_original() -> None:
    body = "Grüße\r\n.a dot\r\ntrailing space \r\n".encode()
    message = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
    out = seven_bit(message)
    assert out is not None and out.isascii()
    assert out.count(b"Content-Transfer-Encoding") == 1 and b"Content-Transfer-Encoding: quoted-printable\r\n" in out
    assert parts(out) == [("text/plain", body)]


def test_each_part_of_a_multipart_is_converted_and_the_rest_kept() -> None:
    binary = bytes(range(256))
    message = (
        b'Subject: y\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "hé\r\n".encode() + b"\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nascii stays\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n" + binary + b"\r\n"
        b"--b1--\r\nepilogue\r\n"
    )
    out = seven_bit(message)
    assert out is not None and out.isascii()
    assert out.startswith(b'Subject: y\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n')
    assert b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii stays\r\n--b1\r\n" in out and out.endswith(b"--b1--\r\nepilogue\r\n")
    assert parts(out) == [("text/plain", "hé\r\n".encode()), ("text/plain", b"ascii stays"), ("application/octet-stream", binary)]


def test_eight_bit_in_a_header_cannot_be_converted() -> None:
    assert seven_bit("Subject: Grüße\r\n\r\nbody é\r\n".encode()) is None
