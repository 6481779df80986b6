"""DKIM signing at the post-queue stage, and interop with OpenDKIM both ways: what vsmtp signs
(rsa-sha256 and ed25519-sha256) verifies in OpenDKIM, what OpenDKIM signs verifies in vsmtp.
ARC sealing of forwarded mail; keys that cannot be read; `vsmtp dkim keygen`."""

from __future__ import annotations

import email
import email.policy
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp.auth import arc, dkim
from vsmtp.config import Config
from vsmtp.queue import events as qe

from ..conftest import maildir_files, wait_delivered, wait_journal, with_changes
from ..daemon import Daemon, run_cli
from ..dnsserver import DnsServer
from ..rules.test_stages import rules_file
from . import opendkim
from .conftest import Key
from .test_reception import events, message, send


def signing_config(config: Config, keys: dict[str, Key], **changes: Any) -> Config:
    return with_changes(
        config,
        relay={"networks": ("127.0.0.0/8",)},  # the test's client is one of ours: its mail is signed
        dkim={"sign": (keys["OURS_RSA"].config(), keys["OURS_ED"].config())},
        **changes,
    )


def only_signature(raw: bytes, selector: str) -> bytes:
    """The message with its other DKIM-Signature fields taken out (the rest still verifies)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = [
        f for f in fields if not f[0].lower().startswith(b"dkim-signature:") or f"s={selector};".encode() in b"".join(f).replace(b" ", b"")
    ]
    return b"\r\n".join(line for f in kept for line in f) + b"\r\n\r\n" + body


async def test_mail_from_our_users_is_signed_with_both_keys_and_verifies_in_opendkim(
    start_server: Any, auth_config: Config, keys: dict[str, Key], auth_dns: DnsServer, tmp_path: Path
) -> None:
    opendkim.needed()
    config = signing_config(auth_config, keys)
    running = await start_server(config)
    assert (await trio.to_thread.run_sync(send, running, "alice@ours.test", message("Alice <alice@ours.test>")))[0] == 250
    await wait_delivered(running, 1)
    raw = maildir_files(config, "bob")[0].read_bytes()
    assert raw.count(b"DKIM-Signature:") == 2
    [signed] = events(running, qe.MessageSigned)
    assert signed.method == "dkim" and sorted(signed.signatures) == ["d=ours.test s=ed a=ed25519-sha256", "d=ours.test s=rsa a=rsa-sha256"]
    published = {f"{k.selector}._domainkey.{k.domain}": k.record.encode() for k in (keys["OURS_RSA"], keys["OURS_ED"])}
    assert [s.result for s in dkim.verify(raw, published).signatures] == ["pass", "pass"]
    for selector in ("rsa", "ed"):
        verdict = opendkim.verify(only_signature(raw, selector), tmp_path / f"verify-{selector}", auth_dns)
        assert f"s={selector}, d=ours.test" in verdict and "succeeded" in verdict, verdict


async def test_a_subject_rewritten_and_folded_at_postq_is_what_the_signature_covers(
    start_server: Any, auth_config: Config, keys: dict[str, Key], auth_dns: DnsServer, tmp_path: Path
) -> None:
    opendkim.needed()
    folded = "[ours] hello,\\r\\n\\tfolded onto a second line"  # header edits may fold (RFC 5322 2.2.3)
    rules = rules_file(tmp_path, f'@rule.postq\ndef tag(ctx):\n    ctx.set_header("Subject", "{folded}")\n')
    config = signing_config(auth_config, keys, rules=rules)
    running = await start_server(config)
    assert (await trio.to_thread.run_sync(send, running, "alice@ours.test", message("alice@ours.test")))[0] == 250
    await wait_delivered(running, 1)
    raw = maildir_files(config, "bob")[0].read_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert parsed["Subject"] == "[ours] hello,\r\n\tfolded onto a second line"
    assert "succeeded" in opendkim.verify(only_signature(raw, "rsa"), tmp_path / "verify", auth_dns)


@pytest.mark.parametrize(("placeholder", "algorithm"), [("OPENDKIM", "rsa-sha256"), ("OPENDKIM_ED", "ed25519-sha256")])
async def test_mail_signed_by_opendkim_verifies_in_vsmtp(
    start_server: Any, auth_config: Config, keys: dict[str, Key], tmp_path: Path, placeholder: str, algorithm: str
) -> None:
    opendkim.needed()
    key = keys[placeholder]
    raw = opendkim.sign(
        message("alice@signed.test", "signed by OpenDKIM"), domain=key.domain, selector=key.selector, key=key.path, algorithm=algorithm,
        workdir=tmp_path / "opendkim",
    )  # fmt: skip
    assert b"a=" + algorithm.encode() in raw
    running = await start_server(auth_config)
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", raw))[0] == 250
    await wait_journal(running, lambda records: any(r.tag == qe.DkimVerified.TAG for r in records))
    [verified] = events(running, qe.DkimVerified)
    [sig] = verified.result["signatures"]
    assert (sig["result"], sig["selector"], sig["algorithm"]) == ("pass", key.selector, algorithm)
    assert events(running, qe.DmarcEvaluated)[0].result["result"] == "pass"  # aligned with From: signed.test


async def test_forwarded_mail_is_sealed_with_arc(start_server: Any, auth_config: Config, keys: dict[str, Key], tmp_path: Path) -> None:
    sealer = Key("ours.test", "rsa", "rsa-sha256", keys["OURS_RSA"].path, keys["OURS_RSA"].record)
    # A list address of ours expands to a member elsewhere: the message is forwarded.
    rules = rules_file(tmp_path, '@rule.data\ndef expand(ctx):\n    ctx.rewrite_recipient("list@ours.test", "member@far.test")\n')
    config = with_changes(auth_config, rules=rules, arc={"seal": sealer.config()}, delivery={"enabled": True})
    running = await start_server(config)
    code, _ = await trio.to_thread.run_sync(lambda: send(running, "a@spf-pass.test", message("a@spf-pass.test"), rcpt="list@ours.test"))
    assert code == 250
    records = await wait_journal(running, lambda records: any(r.tag == qe.MessageSigned.TAG for r in records))
    [sealed] = events(running, qe.MessageSigned)
    assert (sealed.method, sealed.signatures) == ("arc", ("d=ours.test s=rsa a=rsa-sha256",))
    [modified] = [qe.decode(r) for r in records if r.tag == qe.MessageModified.TAG]
    body = running.journal.blob(modified.blob)
    assert body is not None and body.startswith(b"ARC-Seal: i=1;")
    chain = arc.verify(body, {"rsa._domainkey.ours.test": sealer.record.encode()})
    assert (chain.result, chain.sealers) == ("pass", ("ours.test",))


def test_a_key_that_cannot_be_read_stops_vsmtp_at_start_naming_it(tmp_path: Path) -> None:
    daemon = Daemon(
        tmp_path,
        '[[dkim.sign]]\ndomain = "example.org"\nselector = "s1"\nkey = "keys/missing.key"\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n',
    )
    with pytest.raises(AssertionError, match=r"exited with 1") as failed:
        daemon.start()
    assert "keys/missing.key" in str(failed.value) and "cannot read" in str(failed.value)


def test_keygen_writes_a_private_key_and_prints_the_record(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "dkim", "keygen", "example.org", "2026e", "--algorithm", "ed25519-sha256")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "var" / "dkim" / "2026e.example.org.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert '2026e._domainkey.example.org. IN TXT ( "v=DKIM1; k=ed25519; p=' in done.stdout
    assert 'key = "var/dkim/2026e.example.org.key"' in done.stdout
    again = run_cli(tmp_path, "dkim", "keygen", "example.org", "2026e")
    assert again.returncode == 1 and "not overwritten" in again.stderr
