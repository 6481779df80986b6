"""One HTTPS request over trio, for what vsmtp fetches or posts itself (MTA-STS policies,
TLS reports): the host's addresses through vsmtp's resolver, verified TLS (the context
checks the certificate and its name), HTTP/1.0 (no chunks, no keep-alive), no redirects,
a bounded response, within a timeout."""

from __future__ import annotations

import trio

from .dns import AnswerCache


class HttpsError(Exception):
    """The request could not be made, or the answer is not HTTP."""


async def request(
    host: str,
    path: str,
    *,
    dns: AnswerCache,
    context: object,
    port: int = 443,
    method: str = "GET",
    body: bytes = b"",
    content_type: str = "",
    limit: int = 64 * 1024,
    timeout: float = 60.0,
) -> tuple[int, bytes]:
    """(status, body) of `method https://host:port/path`; at most `limit` octets of the body read."""
    with trio.fail_after(timeout):
        addresses = [r.to_text() for kind in ("AAAA", "A") for r in await dns.records(host, kind)]  # type: ignore[attr-defined]
        if not addresses:
            raise HttpsError(f"{host} has no address")
        tcp = await trio.open_tcp_stream(addresses[0], port)
        stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)  # type: ignore[arg-type]
        async with stream:
            head = f"{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: vsmtp\r\n"
            if method != "GET":
                head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            await stream.send_all(head.encode() + b"\r\n" + body)
            data = bytearray()
            while len(data) <= limit + 4096 and (chunk := await stream.receive_some(16384)):
                data += chunk
    header, _, answer = bytes(data).partition(b"\r\n\r\n")
    status = header.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
        raise HttpsError(f"https://{host}{path}: not an HTTP answer")
    return int(status[1]), answer[: limit + 1]
