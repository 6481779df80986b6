"""Plugins load by entry-point name from the config; observers see every committed event."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import pytest
import trio
import trio.lowlevel

import vsmtp
from vsmtp.config import Config
from vsmtp.errors import PluginError
from vsmtp.plugins import PluginManager, available

from .conftest import sendmail, wait_delivered


def test_first_party_plugins_are_installed() -> None:
    assert "maillog" in available()


def test_an_unknown_plugin_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match=r"plugin 'nope' is not installed .*maillog"):
        PluginManager().load(["nope"])


async def test_maillog_loaded_by_name_logs_each_message(start_server: Any, config: Config, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vsmtp.maillog")
    running = await start_server(dataclasses.replace(config, plugins=("maillog",)))
    await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n")
    await wait_delivered(running, 1)
    with trio.fail_after(5):
        while not any("status=sent" in r.getMessage() for r in caplog.records):
            await trio.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "vsmtp.maillog"]
    assert any(re.fullmatch(r"\w+: from=<a@example\.org>, size=\d+, nrcpt=1 \(queue active\)", line) for line in lines)
    assert any("to=<bob@localhost>, relay=maildir, status=sent" in line for line in lines)
    running.cancel_scope.cancel()


class Recorder:
    """An async observer and a failing one, registered directly (as tests and embedders may)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    @vsmtp.hookimpl
    async def vsmtp_event(self, event: Any, position: int) -> None:
        await trio.lowlevel.checkpoint()  # really async
        self.seen.append((event.TAG, position))


class Broken:
    @vsmtp.hookimpl
    def vsmtp_event(self, event: Any) -> None:
        raise RuntimeError("observer bug")


async def test_async_observers_see_every_event_in_order_and_a_broken_one_harms_nobody(
    start_server: Any, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    manager = PluginManager()
    manager.register(Broken(), "broken")
    manager.register(recorder, "recorder")
    running = await start_server(config, plugins=manager)
    await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n")
    await wait_delivered(running, 1)
    with trio.fail_after(5):
        while len(recorder.seen) < running.journal.last_position():
            await trio.sleep(0.01)
    assert [p for _, p in recorder.seen] == list(range(1, running.journal.last_position() + 1))
    assert recorder.seen[0][0] == "session.opened"
    assert "delivery.succeeded" in [t for t, _ in recorder.seen]
    assert any("plugin broken: vsmtp_event raised" in r.getMessage() for r in caplog.records)
    running.cancel_scope.cancel()
