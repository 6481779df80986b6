"""`vsmtp journal export --message ID --format eml|json` on a message received over SMTP."""

from __future__ import annotations

import dataclasses
import email.policy
import hashlib
import json
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trio

from vsmtp.config import Config, JournalConfig

from .conftest import sendmail, wait_delivered
from .daemon import VSMTP


async def test_a_message_exported_as_eml_and_json(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(dataclasses.replace(config, journal=JournalConfig(path=str(tmp_path / "var" / "journal"))))
    message = EmailMessage()
    message["Subject"] = "report"
    message["Message-ID"] = "<report-1@example.org>"
    message.set_content("the text\n")
    message.add_alternative("<p>the html</p>\n", subtype="html")
    pdf = b"%PDF-1.4 not really\n"
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename="report.pdf")
    await sendmail(running, "a@example.org", ["bob@localhost"], message.as_bytes(policy=email.policy.SMTP))
    await wait_delivered(running, 1)
    [queue_id] = [r.payload["queue_id"] for r in running.journal.read(0) if r.tag == "message.accepted"]

    def export(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([VSMTP, "journal", "export", *args], cwd=tmp_path, capture_output=True, timeout=60, check=False)

    eml = await trio.to_thread.run_sync(export, "--message", queue_id, "--format", "eml")
    assert eml.returncode == 0 and eml.stdout == running.journal.blob(queue_id.encode())
    by_message_id = await trio.to_thread.run_sync(export, "--message", "<report-1@example.org>", "--format", "json")
    exported = json.loads(by_message_id.stdout)
    assert exported["envelope"]["queue_id"] == queue_id and exported["envelope"]["recipients"] == ["bob@localhost"]
    assert ["Subject", "report"] in exported["headers"] and exported["headers"][0][0] == "Received"
    assert exported["text"] == "the text\n" and exported["html"] == "<p>the html</p>\n"
    assert exported["attachments"] == [
        {"type": "application/pdf", "name": "report.pdf", "size": len(pdf), "sha256": hashlib.sha256(pdf).hexdigest()}
    ]
    missing = await trio.to_thread.run_sync(export, "--format", "eml")
    assert missing.returncode == 2 and b"add --message ID" in missing.stderr
    running.cancel_scope.cancel()
