"""The rules' view of a message: header edits keep the body's bytes, part edits re-serialise."""

from __future__ import annotations

import email
import email.policy

import pytest

from vsmtp.rules import Message

RAW = b"Subject: hi\r\nX-Tag: one\r\n folded\r\nX-Tag: two\r\n\r\nbody line\r\n.dots stay\r\n"


def test_header_edits_touch_only_the_header_section() -> None:
    message = Message(RAW)
    assert message.headers("X-Tag") == ["one folded", "two"] and message.header("subject") == "hi"
    message.edit_header("remove_header", "X-Tag")
    message.edit_header("set_header", "Subject", "changed")
    message.edit_header("add_header", "X-New", "1")
    assert message.raw == b"X-New: 1\r\nSubject: changed\r\n\r\nbody line\r\n.dots stay\r\n"
    assert message.header("X-Tag") is None and message.header("Subject") == "changed"


def test_adding_a_part_makes_an_attachment() -> None:
    message = Message(b"Subject: hi\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
    assert message.attachments() == []
    message.add_part("the notes\n", filename="notes.txt")
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/mixed" and parsed["Subject"] == "hi"
    assert [p.get_filename() for p in Message(message.raw).attachments()] == ["notes.txt"]
    assert "hello" in parsed.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]


def test_a_header_value_may_fold_but_not_break() -> None:
    from vsmtp.rules.context import _header_value

    assert _header_value("long\r\n\tand folded") == "long\r\n\tand folded"
    for smuggled in ("x\r\nBcc: eve@example.org", "x\nBcc: eve@example.org", "x\r\n", "x\r y"):
        with pytest.raises(ValueError, match="fold"):
            _header_value(smuggled)
