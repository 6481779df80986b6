"""Every journal event survives encoding and decoding, and encodes to what CBOR writes as
it is (lists and dicts, never tuples): checked for each event class with values made from
its own type hints, so that a field the codec's plan misreads fails here."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import pytest
from vsmtp_journal import Record

from vsmtp.queue import events as qe


def sample(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return "x"
    if hint is bool:
        return True
    if hint is int:
        return 7
    if hint is float:
        return 1.5
    if hint is bytes:
        return b"\x00b"
    if origin is tuple:
        return (sample(args[0]), sample(args[0])) if args and args[-1] is Ellipsis else tuple(sample(a) for a in args)
    if origin in (Mapping, dict, typing.Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return {sample(args[0]): sample(args[1])} if args else {"k": "v"}
    if origin in (typing.Union, type(int | None)):
        return sample(next(a for a in args if a is not type(None)))
    if origin is typing.Literal:
        return args[0]
    return "any"


def plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return False
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(plain(v) for v in value.values())
    return True


@pytest.mark.parametrize("cls", sorted(qe.EVENTS.values(), key=lambda c: c.TAG), ids=lambda c: c.TAG)
def test_each_event_round_trips_through_its_payload(cls: type[qe.JournalEvent]) -> None:
    hints = typing.get_type_hints(cls)
    event = cls(**{f.name: sample(hints[f.name]) for f in dataclasses.fields(cls)})
    payload = event.to_payload()
    assert plain(payload), payload
    assert qe.decode(Record(position=1, tag=cls.TAG, version=cls.VERSION, payload=payload)) == event
