"""OTLP trace requests written straight to protobuf's wire format.

The SDK's encoder (opentelemetry-exporter-otlp-proto-common) builds a protobuf object for
every span, attribute, event and link, about 40 us a span here; a server that makes a few
spans per message spends more on that than on the message. This one writes the same
ExportTraceServiceRequest as bytes (about a fifth of the time): the names of attribute keys
and spans, which repeat, are encoded once and kept. `tests/telemetry/test_encoding.py`
checks that both encoders give the same message.

The wire format (protobuf's encoding guide): each field is a key, `field number << 3 | wire
type`, then a varint (type 0), 8 bytes little-endian (1), a length and that many bytes (2),
or 4 bytes (5). Fields equal to their default are left out, as protobuf does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanContext, SpanKind

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([n]) for n in range(0x80)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return (
        _SMALL[number << 3 | 2] + varint(len(payload)) + payload
        if number < 16
        else varint(number << 3 | 2) + varint(len(payload)) + payload
    )


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode("utf-8", "surrogatepass")) if text else b""


class _Cache(dict[Any, bytes]):
    """Encodings of values that repeat (keys, names), made once; bounded so that values
    that do not repeat cannot grow it without end."""

    def __init__(self, make: Callable[[Any], bytes], limit: int = 4096) -> None:
        super().__init__()
        self.make = make
        self.limit = limit

    def __missing__(self, key: Any) -> bytes:
        made = self.make(key)
        if len(self) < self.limit:
            self[key] = made
        return made


_KEY_HEADS = _Cache(lambda key: _string(1, key) + b"\x12")  # KeyValue.key, then the tag of KeyValue.value
_NAMES = _Cache(lambda name: _string(5, name))  # Span.name
_EVENT_NAMES = _Cache(lambda name: _string(2, name))  # Span.Event.name


def _any_value(value: Any) -> bytes:
    """An AnyValue message (its content, without its own tag)."""
    if type(value) is tuple:  # what a span keeps of a list (vsmtp.statuses): no ABC to ask
        return _array(value)
    if isinstance(value, str):
        return _string(1, value) or b"\x0a\x00"  # an empty string is still a string value
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(7, value) if value else b"\x3a\x00"
    if isinstance(value, Sequence):
        return _array(value)
    if isinstance(value, Mapping):
        return _field(6, _attributes(1, value))  # KeyValueList.values
    return _string(1, str(value)) or b"\x0a\x00"


def _array(values: Sequence[Any]) -> bytes:
    return _field(5, b"".join(_field(1, _any_value(item)) for item in values))  # ArrayValue.values


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue as field `number`. A string or an integer, nearly every value vsmtp
    records, is written as a prefix kept for its key and its length (the field's tag, the
    lengths, the key, the value's tag) and then the value itself."""
    if not attributes:
        return b""
    strings, integers = _STRING_HEADS[number], _INTEGER_HEADS[number]
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if kind is str:
            text = value.encode("utf-8", "surrogatepass")
            out.append(strings[key, len(text)] + text)
            continue
        if kind is int and value >= 0:
            encoded = _SMALL[value] if value < 0x80 else varint(value)
            out.append(integers[key, len(encoded)] + encoded)
            continue
        if kind is tuple:
            try:
                any_value = _ARRAYS[value]
            except TypeError:  # something unhashable inside (not a valid attribute value, but encodable)
                any_value = _any_value(value)
        else:
            any_value = _any_value(value)
        out.append(_key_value(number, key, len(any_value)) + any_value)
    return b"".join(out)


def _key_value(number: int, key: str, size: int) -> bytes:
    """A KeyValue field up to its value's content, which is `size` octets long."""
    pair = len(_KEY_HEADS[key]) + len(varint(size)) + size
    return varint(number << 3 | 2) + varint(pair) + _KEY_HEADS[key] + varint(size)


def _heads(value_head: Callable[[int], bytes]) -> list[_Cache]:
    """Per field number: (key, length) -> the KeyValue up to the value's last part, where
    `value_head(length)` is what the AnyValue holds before that part."""

    def make(number: int) -> _Cache:
        def head(key_length: tuple[str, int]) -> bytes:
            key, length = key_length
            before = value_head(length)
            return _key_value(number, key, len(before) + length) + before

        return _Cache(head)

    return [make(number) for number in range(16)]


_STRING_HEADS = _heads(lambda length: b"\x0a" + varint(length))  # AnyValue.string_value: its tag and length
_INTEGER_HEADS = _heads(lambda length: b"\x18")  # AnyValue.int_value: its tag (the varint follows)


_ARRAYS = _Cache(_any_value)  # tuples of values (vsmtp.statuses): a few shapes, over and over


def _length(payload: bytes) -> bytes:
    return varint(len(payload)) + payload


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    return _string(3, ",".join(f"{key}={value}" for key, value in state.items())) if state else b""


_KINDS = {kind: b"\x30" + _SMALL[number] for kind, number in _KIND.items()}  # Span.kind, with its tag
_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano and end_time_unix_nano (fixed64), with their tags
_UNSET = b"\x7a\x00"  # an empty Status: unset, no message
_LOCAL_PARENT = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE)  # Span.flags (field 16, fixed32)
_REMOTE_PARENT = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
_LOCAL_LINK = b"\x35" + _fixed32(_HAS_IS_REMOTE)  # Link.flags (field 6, fixed32)
_REMOTE_LINK = b"\x35" + _fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def span(s: ReadableSpan) -> bytes:
    """A Span message's content."""
    context = s.get_span_context()
    assert context is not None
    parent = s.parent
    head = b"\x0a\x10" + context.trace_id.to_bytes(16, "big") + b"\x12\x08" + context.span_id.to_bytes(8, "big")
    if context.trace_state:
        head += _trace_state(context)
    if parent is not None:
        head += b"\x22\x08" + parent.span_id.to_bytes(8, "big")
    parts = [head, _NAMES[s.name], _KINDS[s.kind], _TIMES(0x39, s.start_time or 0, 0x41, s.end_time or 0)]
    if s.attributes:
        parts.append(_attributes(9, s.attributes))
    if s.dropped_attributes:
        parts.append(b"\x50" + varint(s.dropped_attributes))
    for event in s.events:
        body = b"\x09" + _fixed64(event.timestamp) + _EVENT_NAMES[event.name] + _attributes(3, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + varint(event.dropped_attributes)
        parts.append(b"\x5a" + _length(body))
    if s.dropped_events:
        parts.append(b"\x60" + varint(s.dropped_events))
    for link in s.links:
        linked = link.context
        ids = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big") + b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        flags = _REMOTE_LINK if linked.is_remote else _LOCAL_LINK
        if not link.attributes and not link.dropped_attributes:  # the usual link: ids and flags, 33 octets
            parts.append(b"\x6a\x21" + ids + flags)
            continue
        body = ids + _attributes(4, link.attributes)  # no trace_state: the SDK's encoder leaves it out too
        if link.dropped_attributes:
            body += b"\x28" + varint(link.dropped_attributes)
        parts.append(b"\x6a" + _length(body + flags))
    if s.dropped_links:
        parts.append(b"\x70" + varint(s.dropped_links))
    status = s.status
    if status is not None:
        if not status.status_code.value and not status.description:
            parts.append(_UNSET)
        else:
            body = _string(2, status.description or "")
            if status.status_code.value:
                body += b"\x18" + varint(status.status_code.value)
            parts.append(b"\x7a" + _length(body))
    parts.append(_REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT)
    return b"".join(parts)


_RESOURCES: dict[int, tuple[Any, bytes]] = {}  # id(resource) -> (the resource, its Resource message's field)
_SCOPES: dict[Any, bytes] = {}


def _resource(resource: Any) -> bytes:
    known = _RESOURCES.get(id(resource))
    if known is not None and known[0] is resource:
        return known[1]
    made = _field(1, _attributes(1, resource.attributes))
    if len(_RESOURCES) > 64:
        _RESOURCES.clear()
    _RESOURCES[id(resource)] = (resource, made)  # the resource is kept: its id cannot be reused meanwhile
    return made


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    made = _SCOPES.get(scope)
    if made is None:
        body = _string(1, scope.name) + _string(2, scope.version or "") + _attributes(3, getattr(scope, "attributes", None))
        made = _field(1, body) + _string(3, scope.schema_url or "")
        if len(_SCOPES) < 64:
            _SCOPES[scope] = made
    return made


def request_bytes(spans: Iterable[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest: the spans grouped by resource, then by scope, in the
    order they first appear (as the SDK's encoder groups them)."""
    grouped: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
    resource = scope = encoded = None  # the group of the span before: most batches are one group
    for s in spans:
        if encoded is None or s.resource is not resource or s.instrumentation_scope is not scope:
            resource, scope = s.resource, s.instrumentation_scope
            scopes = grouped.setdefault(id(resource), (resource, {}))[1]
            encoded = scopes.setdefault(scope or None, [])
        content = span(s)
        size = len(content)
        encoded.append(b"\x12" + (_SMALL[size] if size < 0x80 else varint(size)) + content)
    out = []
    for resource, scopes in grouped.values():
        body = [_resource(resource)]
        for scope, encoded in scopes.items():
            body.append(_field(2, _scope(scope) + b"".join(encoded)))
        body.append(_string(3, resource.schema_url or ""))
        out.append(_field(1, b"".join(body)))
    return b"".join(out)


class Encoded(bytes):
    """A request already in its wire form, for a caller that asks a protobuf message for it."""

    def SerializePartialToString(self) -> bytes:  # protobuf's name
        return bytes(self)

    SerializeToString = SerializePartialToString


def encoded_request(sdk_spans: Sequence[ReadableSpan]) -> Encoded:
    """What the HTTP exporter takes in place of its encoder's message (providers.py)."""
    return Encoded(request_bytes(sdk_spans))
