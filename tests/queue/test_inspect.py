"""`vsmtp queue list`: each pending recipient with its own error, never another's."""

from __future__ import annotations

from vsmtp.queue import inspect
from vsmtp.queue.state import MessageState, RecipientState


def test_a_pending_recipient_is_shown_with_its_own_error_only() -> None:
    message = MessageState(
        queue_id="Q",
        reverse_path="a@example.org",
        blob=b"Q",
        size=10,
        accepted_at=0.0,
        recipients=(
            RecipientState(address="wait@far.test", attempts=0),
            RecipientState(address="slow@slow.test", attempts=2, next_attempt=99.0, last_error="451 4.7.1 try later"),
            RecipientState(address="gone@far.test", status="failed", attempts=1, last_error="550 5.1.1 no such user"),
        ),
    )
    row = inspect.summary(message, now=10.0)
    assert row["pending"] == ["wait@far.test", "slow@slow.test"]
    assert row["errors"] == {"slow@slow.test": "451 4.7.1 try later"}
    assert row["last_error"] == "451 4.7.1 try later"  # not the failed recipient's 550
    quiet = inspect.summary(MessageState(**{**vars_of(message), "recipients": message.recipients[::2]}), now=10.0)
    assert quiet["errors"] == {} and quiet["last_error"] == ""


def vars_of(message: MessageState) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}
