"""Shared fixtures: a configuration under tmp_path, and a running server in the test's nursery."""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from vsmtp.config import Config, DeliveryConfig, JournalConfig, ListenerConfig
from vsmtp.daemon import Running, serve


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The embedded defaults, on an ephemeral loopback port, with all state under tmp_path."""
    return Config(
        hostname="mx.test",
        listeners=(ListenerConfig(addresses=("127.0.0.1:0",)),),
        journal=JournalConfig(path=str(tmp_path / "journal")),
        delivery=DeliveryConfig(maildir=str(tmp_path / "mail" / "{user}" / "Maildir"), workers=4),
    )


def with_changes(config: Config, **changes: Any) -> Config:
    """`config` with nested changes: with_changes(c, delivery={"enabled": False})."""
    values = {}
    for key, value in changes.items():
        current = getattr(config, key)
        values[key] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **values)


@pytest.fixture
def start_server(nursery: trio.Nursery) -> Callable[..., Any]:
    """await start_server(config) -> Running; stopped when the test ends."""

    async def start(config: Config, **kwargs: Any) -> Running:
        running: Running = await nursery.start(lambda task_status: serve(config, task_status=task_status, **kwargs))
        return running

    return start


@pytest.fixture
async def server(start_server: Callable[..., Any], config: Config) -> AsyncIterator[Running]:
    running = await start_server(config)
    yield running
    running.cancel_scope.cancel()


def port_of(running: Running) -> int:
    return running.bound[0].port


def smtp_client(running: Running) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port_of(running), timeout=10)


async def sendmail(running: Running, sender: str, recipients: list[str], message: bytes | str) -> dict[str, Any]:
    """Send one message with smtplib (in a thread) and QUIT; returns sendmail's refusals."""

    def send() -> dict[str, Any]:
        with smtp_client(running) as client:
            return client.sendmail(sender, recipients, message)

    return await trio.to_thread.run_sync(send)


async def wait_delivered(running: Running, count: int, *, timeout: float = 10) -> None:
    """Block until `count` messages have completed (every recipient final)."""
    with trio.fail_after(timeout):
        while running.projection.state.completed < count:
            await running.projection.wait_touched(timeout=0.05)
            await trio.lowlevel.checkpoint()


async def wait_journal(running: Running, predicate: Callable[[list[Any]], bool], *, timeout: float = 10) -> list[Any]:
    """Block until predicate(all records) holds; wakes on each commit, never polls blindly."""
    with trio.fail_after(timeout):
        while True:
            records = list(running.journal.read(0))
            if predicate(records):
                return records
            await running.writer.wait_committed(records[-1].position if records else 0)


def has_tag(tag: str, count: int = 1) -> Callable[[list[Any]], bool]:
    return lambda records: sum(r.tag == tag for r in records) >= count
