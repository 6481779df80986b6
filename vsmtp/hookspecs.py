"""Every hook vsmtp calls, typed and documented. Nothing else lives here.

Implementations take only the arguments they use (pluggy passes them by name), so new
arguments can be added without breaking anyone. Any implementation may be a coroutine
function: vsmtp awaits what it returns.

The stage hooks (vsmtp_connect ... vsmtp_delivery) return a Verdict (vsmtp.accept(),
vsmtp.reject(reply), vsmtp.deny(reply), vsmtp.faccept(), vsmtp.quarantine(name)), or None
for no opinion. The rules file's functions for the stage run first, then the plugins' in
the order the configuration names them; the first verdict other than None settles the
stage and the hooks after it are not called. A hook that raises answers 451 4.3.0 for that
transaction; it is logged with the plugin's name and the session goes on.

Every stage hook receives `ctx` (vsmtp.Context): the connection facts (client and server
address, listener, role, TLS, HELO name, authenticated identity, direction), the envelope
so far, the message from data on (vsmtp.Message), and action methods (add_header,
set_header, remove_header, rewrite_sender, rewrite_recipient, add_recipient,
remove_recipient, export, and set_route at delivery).
"""

from __future__ import annotations

from typing import Any

import pluggy

from .queue.events import JournalEvent, UnknownEvent
from .rules.context import Context
from .rules.verdicts import Verdict

hookspec = pluggy.HookspecMarker("vsmtp")


@hookspec
def vsmtp_event(event: JournalEvent | UnknownEvent, position: int) -> None:
    """Observe one committed journal event.

    Called once for every record committed to the journal after the server started, in
    journal order, after the commit (so the event is durable). Observers cannot change
    anything; what they return is ignored.

    :param event: the journal event, a frozen dataclass from vsmtp.events (for example
        MessageAccepted, DeliverySucceeded), or vsmtp.events.UnknownEvent for a tag this
        version does not know. `event.TAG` is its stable name.
    :param position: the event's position in the journal (unique, increasing).

    May be async. An exception is logged with the plugin's name and does not stop the server
    or other observers.
    """


@hookspec
def vsmtp_configure(name: str, section: dict[str, Any]) -> None:
    """Read this plugin's configuration section, `[plugin.NAME]` in the config file.

    Called once when the plugin loads, and again after each successful reload (SIGHUP),
    before any session uses it. Raise ValueError with a clear message for a bad value: the
    server refuses to start (or the reload is refused) and says so.

    :param name: the name the plugin was loaded under (its entry point name).
    :param section: the section's keys and values ({} when the config has none).

    Not async.
    """


@hookspec
def vsmtp_connect(ctx: Context) -> Verdict | None:
    """A client connected, before the greeting. deny() answers with its reply (554 by
    default) instead of 220 and closes the connection; faccept() trusts the client for the
    whole session. May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_helo(ctx: Context) -> Verdict | None:
    """After EHLO or HELO (ctx.helo holds the name). deny() refuses it and every later
    MAIL of the session. May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_auth(ctx: Context) -> Verdict | None:
    """After AUTH's user name and password were found right (ctx.auth holds the user name),
    before the 235 reply. deny() or reject() turns it into a failure (535 5.7.1 by default;
    ctx.auth is "" again), and deny() also refuses every later MAIL of the session;
    quarantine(name) holds every message of the session; faccept() trusts it from here on.
    A hook that raises answers 454 4.7.0 (try later). Wrong passwords never reach this hook.
    May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_mail(ctx: Context) -> Verdict | None:
    """After MAIL FROM (ctx.sender, ctx.mail_params), before its reply. deny() refuses the
    transaction. May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_rcpt(ctx: Context, recipient: str) -> Verdict | None:
    """For each RCPT TO, before vsmtp's own checks (local user, relaying). `recipient` (also
    ctx.recipient) is the address; ctx.recipients those accepted before it. reject() refuses
    this recipient; accept() takes it without vsmtp's own checks (an exception to relaying
    rules is made this way: take care); deny() refuses it and the rest of the transaction.
    May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :param recipient: the address of this RCPT TO, as the client wrote it (also ctx.recipient).
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_data(ctx: Context) -> Verdict | None:
    """The whole message is in (ctx.message), before it is queued: the reply to DATA waits
    for this stage. Header and envelope actions asked here apply to what is queued.
    deny() refuses the message; quarantine(name) takes it into that quarantine. May be
    async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_postq(ctx: Context) -> Verdict | None:
    """Once per message, after it is queued (the client has its 250) and before its first
    delivery, in the delivery process. ctx holds the facts of the session that sent it (read
    back from the journal), ctx.queue_id, the envelope as queued and ctx.message. Header,
    part and envelope actions change what is delivered (message.modified, a new body);
    deny() or reject() fails every recipient (the sender gets a bounce); quarantine(name)
    holds it. A hook that raises leaves the message waiting: the stage runs again a minute
    later. May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :return: a Verdict, or None for no opinion.
    """


@hookspec
def vsmtp_delivery(ctx: Context, recipient: str, route: str) -> Verdict | None:
    """Before each delivery attempt of each recipient, in the delivery process. `route` (also
    ctx.route) is what vsmtp chose: "local", "smtp" (the domain's mail hosts) or
    "smtp:[HOST]:PORT" (the relayhost). ctx.set_route(recipient, route) sends it elsewhere
    (Postfix's transport maps); deny() or reject() fails this recipient (a bounce);
    quarantine(name) holds the message. The message cannot be changed here. A hook that
    raises defers this recipient (retried as any deferral). May be async.

    :param ctx: the session as rules see it (vsmtp.Context); its action methods change
        the message or its envelope.
    :param recipient: the recipient about to be delivered (also ctx.recipient).
    :param route: the route vsmtp chose for it (also ctx.route).
    :return: a Verdict, or None for no opinion.
    """
