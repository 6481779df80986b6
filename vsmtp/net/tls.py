"""TLS for the listeners: server SSL contexts (TLS 1.2 minimum, SNI) and the self-signed
certificate generated when none is configured.

Contexts are built once per configuration (and again on SIGHUP); sessions wrap their stream
with trio.SSLStream, for STARTTLS (RFC 3207) or implicit TLS (RFC 8314).
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from pathlib import Path

import trio

from ..config import Config, ListenerConfig, TlsConfig

log = logging.getLogger(__name__)

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _base_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]  # 1.3 is preferred: OpenSSL picks the highest
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.verify_mode = ssl.CERT_NONE  # MX clients rarely present certificates; we do not ask
    return ctx


def server_context(listener: ListenerConfig, config: Config) -> ssl.SSLContext:
    """The context for `listener`: its certificates with SNI selection, or a self-signed one."""
    certificates = listener.certificates
    if not certificates:
        cert, key = self_signed(config.hostname, Path(config.tls.directory))
        ctx = _base_context(config.tls)
        ctx.load_cert_chain(cert, key)
        return ctx
    default = _base_context(config.tls)
    default.load_cert_chain(certificates[0].certificate, certificates[0].key)
    by_name: dict[str, ssl.SSLContext] = {}
    for entry in certificates:
        ctx = default if entry is certificates[0] else _base_context(config.tls)
        if ctx is not default:
            ctx.load_cert_chain(entry.certificate, entry.key)
        for name in entry.names:
            by_name[name.lower().rstrip(".")] = ctx
    if by_name:

        def choose(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            chosen = by_name.get((server_name or "").lower().rstrip("."))
            if chosen is not None and chosen is not default:
                sock.context = chosen
            return None

        default.sni_callback = choose
    return default


def describe(ssl_object: ssl.SSLObject) -> tuple[str, str, int]:
    """(version, cipher, secret bits) of an established TLS session."""
    name, _, bits = ssl_object.cipher() or ("unknown", "", 0)
    return ssl_object.version() or "unknown", name, bits


def self_signed(hostname: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `hostname`, generated on first use and kept in `directory`."""
    cert_path = directory / f"selfsigned-{hostname}.pem"
    key_path = directory / f"selfsigned-{hostname}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.warning("no certificate configured: generated a self-signed certificate for %s at %s", hostname, cert_path)
    return cert_path, key_path


async def handshake(
    stream: trio.abc.Stream, context: ssl.SSLContext, *, timeout: float
) -> tuple[trio.SSLStream[trio.abc.Stream], tuple[str, str, int]]:
    """Take the server side of a TLS handshake on `stream` (STARTTLS, or an implicit-TLS
    listener): the encrypted stream and its (version, cipher, bits). Raises
    trio.BrokenResourceError or trio.TooSlowError when it fails."""
    ssl_stream = trio.SSLStream(stream, context, server_side=True)
    with trio.fail_after(timeout):
        await ssl_stream.do_handshake()
    return ssl_stream, describe(ssl_stream._ssl_object)  # trio exposes the version and cipher only this way
