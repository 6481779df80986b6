"""The Maildir transport and the worker's exactly-once recovery after a crash mid-delivery."""

from __future__ import annotations

import dataclasses
import mailbox
import time
from pathlib import Path

import pytest
from vsmtp_journal import Journal

from vsmtp.config import Config, DeliveryConfig
from vsmtp.delivery import outcomes
from vsmtp.delivery.transport import Delivery, DeliveryJob, Services
from vsmtp.delivery.transports.maildir import Maildir, deliver, file_name, find
from vsmtp.queue import events as qe
from vsmtp.queue import policy


def deliver_now(config: Config, journal: Journal, *jobs: DeliveryJob) -> list[list[qe.JournalEvent]]:
    """Each job through the maildir transport, one batch, as the worker runs it: its events."""
    services = Services(config=config, journal=journal, writer=None, resolver=None, connections=None, host_limits=None, started=None)  # type: ignore[arg-type]
    deliveries = [
        Delivery(job=job, recipients=((address, attempts),), route=policy.route(address, config))
        for job in jobs
        for address, attempts in job.recipients
    ]
    results = Maildir(services).deliver_batch(deliveries)
    return [outcomes.events(d, r, config, now=time.time()) for d, r in zip(deliveries, results, strict=True)]


def test_deliver_writes_new_and_leaves_tmp_empty(tmp_path: Path) -> None:
    path = deliver(tmp_path / "Maildir", "123.Vabc.host", [b"Subject: a\r\n\r\n", b"body\r\n"])
    assert path == tmp_path / "Maildir" / "new" / "123.Vabc.host"
    assert path.read_bytes() == b"Subject: a\r\n\r\nbody\r\n"
    assert list((tmp_path / "Maildir" / "tmp").iterdir()) == []
    assert (tmp_path / "Maildir" / "cur").is_dir()
    assert path.stat().st_mode & 0o077 == 0
    [message] = list(mailbox.Maildir(tmp_path / "Maildir", create=False))
    assert message["Subject"] == "a"


def test_file_names_are_unique_per_recipient_and_safe() -> None:
    a = file_name(accepted_at=1.5, queue_id="Q", recipient="a@x", hostname="mx/1:2")
    b = file_name(accepted_at=1.5, queue_id="Q", recipient="b@x", hostname="mx/1:2")
    assert a != b and a.startswith("1.VQR") and a.endswith(".mx\\0571\\0722")


def test_find_looks_in_cur_after_a_reader_moved_the_file(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    path = deliver(box, "n1", [b"x"])
    assert find(box, "n1", look_in_cur=False) == path
    path.rename(box / "cur" / "n1:2,S")
    assert find(box, "n1", look_in_cur=False) is None
    assert find(box, "n1", look_in_cur=True) == box / "cur" / "n1:2,S"


def test_a_recovered_job_does_not_write_a_second_copy(tmp_path: Path) -> None:
    # The crash window: the file was renamed into new/ but delivery.succeeded never committed.
    config = Config(hostname="mx.test", delivery=DeliveryConfig(maildir=str(tmp_path / "{user}")))
    with Journal(tmp_path / "j") as journal:
        journal.append(*qe.encode(qe.SessionClosed(at=1.0, session_id="S", reason="x")), blobs={b"Q": b"Subject: s\r\n\r\nb\r\n"})
        job = DeliveryJob(
            queue_id="Q", reverse_path="a@x.org", blob=b"Q", accepted_at=5.0, recipients=(("bob@localhost", 0),), recovered=True
        )
        [[first]] = deliver_now(config, journal, job)
        [[again]] = deliver_now(config, journal, job)
    assert isinstance(first, qe.DeliverySucceeded) and isinstance(again, qe.DeliverySucceeded)
    assert first.detail == again.detail
    assert len(list((tmp_path / "bob" / "new").iterdir())) == 1


def test_an_unwritable_maildir_defers_with_a_retry_time(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where a directory should be")
    config = Config(hostname="mx.test", delivery=DeliveryConfig(maildir=str(tmp_path / "blocked" / "{user}")))
    with Journal(tmp_path / "j") as journal:
        journal.append("x", 1, None, blobs={b"Q": b"m"})
        job = DeliveryJob(
            queue_id="Q", reverse_path="", blob=b"Q", accepted_at=time.time(), recipients=(("bob@localhost", 2),), recovered=False
        )
        [[outcome]] = deliver_now(config, journal, job)
        old = dataclasses.replace(job, accepted_at=time.time() - config.delivery.lifetime)
        [[expired, gone]] = deliver_now(config, journal, old)
        assert isinstance(gone, qe.MessageExpired)
    assert isinstance(outcome, qe.DeliveryDeferred)
    assert "cannot write to the Maildir" in outcome.reason
    assert outcome.retry_at - outcome.at == 1200.0  # the third failure: 5, 10, then 20 minutes
    # Queued for longer than delivery.lifetime (5 days): no more retries, a failure (and a bounce).
    assert isinstance(expired, qe.DeliveryFailed) and expired.reason.startswith("message expired: not delivered in 5 days")
    assert expired.expired and expired.status == "4.4.7" and outcome.status == "4.3.0" and outcome.stage == "mailbox"


def test_renames_waiting_for_a_running_fsync_share_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from vsmtp.delivery.transports import maildir

    real, first_started, release = maildir._fsync_dir, threading.Event(), threading.Event()

    def held_first_time(path: Path) -> None:  # the real fsync, the first one held until released
        if not first_started.is_set():
            first_started.set()
            release.wait(10)
        real(path)

    monkeypatch.setattr(maildir, "_fsync_dir", held_first_time)
    syncer = maildir.DirectorySync()
    first = threading.Thread(target=syncer.sync, args=(tmp_path,))
    first.start()
    assert first_started.wait(10)
    waiting = [threading.Thread(target=syncer.sync, args=(tmp_path,)) for _ in range(5)]
    for thread in waiting:
        thread.start()
    deadline = time.monotonic() + 10
    while syncer._directories[tmp_path].requested < 6:  # all five announced their renames
        assert time.monotonic() < deadline
        time.sleep(0.001)
    release.set()
    for thread in [first, *waiting]:
        thread.join(10)
    assert syncer.fsyncs == 2  # the held one, then one for all five that came during it


def test_concurrent_deliveries_all_land(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(lambda i: deliver(tmp_path / "M", f"{i}.Vq.host", [b"x\r\n"]), range(200)))
    assert len({p.name for p in paths}) == 200 and all(p.read_bytes() == b"x\r\n" for p in paths)


def test_a_failed_directory_fsync_fails_the_deliveries_it_covered(tmp_path: Path) -> None:
    from vsmtp.delivery.transports import maildir

    syncer = maildir.DirectorySync()
    with pytest.raises(FileNotFoundError):
        syncer.sync(tmp_path / "missing")
    (tmp_path / "there").mkdir()
    syncer.sync(tmp_path / "there")
    assert syncer.fsyncs == 1


def test_a_batch_synced_by_filesystem_renames_into_new_only_after_the_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vsmtp.delivery.transports import maildir

    real, seen = maildir.sync_filesystem, []

    def watched(directory: Path) -> None:  # what is where when the filesystem is synced
        seen.append(
            {box: (sorted(p.name for p in (tmp_path / box / "tmp").iterdir()), list((tmp_path / box / "new").iterdir())) for box in "ab"}
        )
        real(directory)

    monkeypatch.setattr(maildir, "sync_filesystem", watched)
    with maildir.batch(by_filesystem=True):
        for box in "ab":
            for i in range(3):
                maildir.deliver(tmp_path / box, f"{i}.V{box}.host", [b"Subject: s\r\n\r\n", f"{box}{i}\r\n".encode()])
        assert [list((tmp_path / box / "new").iterdir()) for box in "ab"] == [[], []]  # nothing visible before the batch ends
    # One sync for the one filesystem both Maildirs are on, all six files still in tmp/ then.
    assert seen == [{box: ([f"{i}.V{box}.host" for i in range(3)], []) for box in "ab"}]
    for box in "ab":
        assert list((tmp_path / box / "tmp").iterdir()) == []
        assert sorted(p.read_bytes() for p in (tmp_path / box / "new").iterdir()) == [
            f"Subject: s\r\n\r\n{box}{i}\r\n".encode() for i in range(3)
        ]


def test_a_failed_filesystem_sync_defers_the_batch_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from vsmtp.delivery.transports import maildir

    def failing(directory: Path) -> None:
        raise OSError(errno.EIO, "syncfs: Input/output error", str(directory))

    config = Config(hostname="mx.test", delivery=DeliveryConfig(maildir=str(tmp_path / "{user}"), maildir_sync="filesystem"))
    with Journal(tmp_path / "j") as journal:
        journal.append("x", 1, None, blobs={b"Q": b"Subject: s\r\n\r\nb\r\n"})
        job = DeliveryJob(
            queue_id="Q",
            reverse_path="",
            blob=b"Q",
            accepted_at=time.time(),
            recipients=(("bob@localhost", 0), ("eve@localhost", 0)),
            recovered=False,
        )
        with monkeypatch.context() as patched:
            patched.setattr(maildir, "sync_filesystem", failing)
            [[bob], [eve]] = deliver_now(config, journal, job)
        assert isinstance(bob, qe.DeliveryDeferred) and isinstance(eve, qe.DeliveryDeferred)
        assert "Input/output error" in bob.reason and bob.status == "4.3.0"
        for user in ("bob", "eve"):  # nothing half-done: not in new/, not left in tmp/
            assert list((tmp_path / user / "tmp").iterdir()) == list((tmp_path / user / "new").iterdir()) == []
        again = dataclasses.replace(job, recipients=(("bob@localhost", 1), ("eve@localhost", 1)))
        [[bob], [eve]] = deliver_now(config, journal, again)
    assert isinstance(bob, qe.DeliverySucceeded) and isinstance(eve, qe.DeliverySucceeded)
    assert [len(list((tmp_path / user / "new").iterdir())) for user in ("bob", "eve")] == [1, 1]
