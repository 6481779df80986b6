"""Run as root, vsmtp writes each mailbox as its owner: files owned by the mailbox user, mode
0600, and a symbolic link the user planted leads nowhere the user could not write."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vsmtp.config import Config
from vsmtp.queue import events as qe

from ..conftest import sendmail, wait_journal, with_changes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writing as the mailbox owner needs root")

MESSAGE = b"From: s@localhost\r\nSubject: owned\r\n\r\nbody\r\n"


@pytest.fixture
def spool() -> Iterator[Path]:
    """A mail spool outside pytest's 0700 directories, so that its owners can reach it."""
    root = Path(tempfile.mkdtemp(prefix="vsmtp-spool-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("sync", ["file", "filesystem"])
async def test_maildir_and_mbox_files_belong_to_the_system_user(start_server: Any, config: Config, spool: Path, sync: str) -> None:
    nobody = pwd.getpwnam("nobody")
    mailboxes = {"nobody@example.org": "mbox"}
    configured = with_changes(
        config,
        delivery={"maildir": f"{spool}/{{user}}/Maildir", "mbox": f"{spool}/{{user}}.mbox", "mailboxes": mailboxes, "maildir_sync": sync},
        local={"domains": ("localhost", "example.org")},
    )
    running = await start_server(configured)
    assert await sendmail(running, "s@localhost", ["nobody@localhost", "nobody@example.org", "virtual@localhost"], MESSAGE) == {}
    await wait_journal(running, lambda rs: sum(r.tag == qe.DeliverySucceeded.TAG for r in rs) == 3, timeout=20)
    [delivered] = list((spool / "nobody" / "Maildir" / "new").iterdir())
    mbox = spool / "nobody.mbox"
    for path in (delivered, mbox):
        info = path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o600), path
    for directory in (spool / "nobody", spool / "nobody" / "Maildir", spool / "nobody" / "Maildir" / "tmp"):
        assert directory.stat().st_uid == nobody.pw_uid, directory
    # No system user of that name: a virtual mailbox, vsmtp's own.
    [virtual] = list((spool / "virtual" / "Maildir" / "new").iterdir())
    assert virtual.stat().st_uid == os.geteuid()


async def test_a_configured_owner_holds_every_mailbox(start_server: Any, config: Config, spool: Path) -> None:
    configured = with_changes(config, delivery={"maildir": f"{spool}/{{user}}/Maildir", "mailbox_owner": "4242:4343"})
    running = await start_server(configured)
    assert await sendmail(running, "s@localhost", ["alice@localhost"], MESSAGE) == {}
    await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=20)
    [delivered] = list((spool / "alice" / "Maildir" / "new").iterdir())
    assert (delivered.stat().st_uid, delivered.stat().st_gid) == (4242, 4343)


async def test_a_link_the_owner_planted_does_not_let_root_write_elsewhere(start_server: Any, config: Config, spool: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    protected = spool / "protected"
    protected.mkdir(mode=0o700)  # root's: nobody may not write here
    maildir = spool / "nobody" / "Maildir"
    for directory in (spool / "nobody", maildir, maildir / "new", maildir / "cur"):
        directory.mkdir()
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    (maildir / "tmp").symlink_to(protected)  # as if nobody had done it
    running = await start_server(with_changes(config, delivery={"maildir": f"{spool}/{{user}}/Maildir"}))
    assert await sendmail(running, "s@localhost", ["nobody@localhost"], MESSAGE) == {}
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=20)
    [deferred] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryDeferred)]
    assert "Permission denied" in deferred.reason and deferred.stage == "mailbox"
    assert list(protected.iterdir()) == [] and list((maildir / "new").iterdir()) == []


@pytest.mark.parametrize("sync", ["file", "filesystem"])
async def test_a_link_planted_as_new_does_not_let_root_rename_elsewhere(start_server: Any, config: Config, spool: Path, sync: str) -> None:
    # With maildir_sync = "filesystem" the rename into new/ comes at the end of the batch,
    # after the sync: it is still made as the owner, never as root.
    nobody = pwd.getpwnam("nobody")
    protected = spool / "protected"
    protected.mkdir(mode=0o700)
    maildir = spool / "nobody" / "Maildir"
    for directory in (spool / "nobody", maildir, maildir / "tmp", maildir / "cur"):
        directory.mkdir()
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    (maildir / "new").symlink_to(protected)
    running = await start_server(with_changes(config, delivery={"maildir": f"{spool}/{{user}}/Maildir", "maildir_sync": sync}))
    assert await sendmail(running, "s@localhost", ["nobody@localhost"], MESSAGE) == {}
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=20)
    [deferred] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryDeferred)]
    assert "Permission denied" in deferred.reason and deferred.stage == "mailbox"
    assert list(protected.iterdir()) == [] and list((maildir / "tmp").iterdir()) == []
