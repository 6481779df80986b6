"""A scripted peer for ServerConnection: feeds bytes, answers every event, records both."""

from __future__ import annotations

from dataclasses import dataclass, field

from vsmtp.smtp import NEED_DATA, PAUSED, ServerConnection, replies
from vsmtp.smtp import events as ev
from vsmtp.smtp.replies import Reply


def default_reply(conn: ServerConnection, event: ev.Event) -> Reply:
    match event:
        case ev.Ehlo():
            return replies.ehlo("mx.test", event.domain, conn.extensions.keywords())
        case ev.Helo():
            return replies.helo("mx.test")
        case ev.MailFrom():
            return replies.SENDER_OK
        case ev.RcptTo():
            return replies.RECIPIENT_OK
        case ev.Data():
            return replies.START_DATA
        case ev.DataEnd() | ev.BdatLast():
            return replies.queued("Q1")
        case ev.Bdat():
            return replies.CHUNK_OK
        case ev.StartTls():
            return replies.READY_FOR_TLS
        case ev.Quit():
            return replies.bye()
        case ev.Invalid():
            return event.reply
    return replies.OK


@dataclass
class Transcript:
    events: list[object] = field(default_factory=list)  # DataChunks merged into one
    output: bytearray = field(default_factory=bytearray)

    @property
    def replies(self) -> list[str]:
        return [line for line in self.output.decode().split("\r\n") if line]

    @property
    def codes(self) -> list[int]:
        """The code of each reply (the last line of multi-line replies only)."""
        return [int(line[:3]) for line in self.replies if line[3:4] == " "]


def drain(conn: ServerConnection, transcript: Transcript) -> None:
    while True:
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, ev.ConnectionClosed):
            if isinstance(event, ev.ConnectionClosed) and event not in transcript.events[-1:]:
                transcript.events.append(event)
            return
        assert event is not PAUSED
        if isinstance(event, ev.DataChunk):
            last = transcript.events[-1] if transcript.events else None
            if isinstance(last, ev.DataChunk):
                transcript.events[-1] = ev.DataChunk(data=last.data + event.data)
            else:
                transcript.events.append(event)
            continue
        transcript.events.append(event)
        transcript.output += conn.send(default_reply(conn, event))


def run(data: bytes, *, mode: str = "whole", conn: ServerConnection | None = None, eof: bool = False) -> Transcript:
    """Greet, feed `data` ('whole', 'bytes' one at a time, or split in 'halves'), answer everything."""
    conn = conn or ServerConnection()
    transcript = Transcript()
    transcript.output += conn.send(replies.greeting("mx.test"))
    if mode == "whole":
        pieces = [data]
    elif mode == "bytes":
        pieces = [data[i : i + 1] for i in range(len(data))]
    else:
        pieces = [data[: len(data) // 2], data[len(data) // 2 :]]
    for piece in pieces:
        conn.receive_data(piece)
        drain(conn, transcript)
    if eof:
        conn.receive_data(b"")
        drain(conn, transcript)
    return transcript


MODES = ["whole", "bytes", "halves"]
