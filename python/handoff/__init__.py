"""handoff: zero-downtime deploys for Python trading bots.

A bot subclasses :class:`App` and calls :func:`run`. Under the handoff
supervisor, a deploy starts the new version of the bot, hands it the live
websocket connections (the exchange never sees a disconnect) and the state
``snapshot()`` returned, and stops the old one only once the new one is
ready. Nothing sent by the exchange is lost, duplicated or reordered.

The connections, the freeze and the handover are the Rust runtime of the
``handoff-worker`` crate (``handoff._native``); Python holds the app::

    import sys, json, handoff

    class Counter(handoff.App):
        NAME, SCHEMA = "counter", 1

        def __init__(self):
            self.seen = 0

        def snapshot(self):
            return json.dumps({"seen": self.seen}).encode()

        def restore(self, schema, data, mode):
            self.seen = json.loads(data)["seen"]

        def on_open(self, conn, out):
            out.send(conn, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})

        def on_message(self, conn, msg, out):
            self.seen += 1

    sys.exit(handoff.run(Counter(), ["wss://stream.binance.com:9443/ws"]))

Callbacks are synchronous and run one at a time, between two messages, so the
state is consistent whenever a freeze comes. Slow work (an order over HTTP)
is an *effect*: ``out.spawn(coroutine)`` runs it on an asyncio loop this
package keeps, and its result comes back through ``on_done``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from . import _native
from ._effects import EffectLoop
from ._native import Conn, Outbox, Timer

__all__ = ["App", "Conn", "Outbox", "Timer", "run", "__version__"]
__version__: str = _native.__version__


class App:
    """Base class of a handoff bot. Every method is optional but
    ``snapshot`` and ``restore``; ``out`` is valid only during its callback.

    Class attributes:

    - ``NAME``: the app's name, written in every snapshot; a snapshot of
      another app is refused.
    - ``SCHEMA``: the schema number of what ``snapshot()`` writes.
    - ``READS_SCHEMAS``: the schema numbers ``restore`` reads (default
      ``[SCHEMA]``). The supervisor refuses a new version that cannot read
      the running one's state before anything is frozen.
    - ``WRITES_SCHEMAS``: the schema numbers ``snapshot_as`` writes (default
      ``[SCHEMA]``): list an older one to allow a rollback to the version
      that reads only that one.
    """

    NAME: str = "python-bot"
    SCHEMA: int = 1
    READS_SCHEMAS: Optional[list] = None
    WRITES_SCHEMAS: Optional[list] = None

    def snapshot(self) -> bytes:
        """The whole state as bytes, in schema ``SCHEMA``."""
        raise NotImplementedError("snapshot() must return the state as bytes")

    def snapshot_as(self, schema: int) -> bytes:
        """The state in ``schema``, one of ``WRITES_SCHEMAS`` (a rollback)."""
        if schema == self.SCHEMA:
            return self.snapshot()
        raise ValueError(f"cannot write schema {schema}")

    def restore(self, schema: int, data: bytes, mode: str) -> None:
        """Replace the state with ``data`` (schema ``schema``). ``mode`` is
        ``"handoff"`` (nothing was missed) or ``"recovery"`` (the previous
        worker died: input since its last checkpoint may be missing).
        Raising refuses the takeover: the old worker carries on."""
        raise NotImplementedError("restore() must read what snapshot() wrote")

    def on_open(self, conn: Conn, out: Outbox) -> None:
        """``conn`` was opened fresh (not handed over): subscribe here."""

    def on_message(self, conn: Conn, msg: Any, out: Outbox) -> None:
        """One message from ``conn``: ``str`` (text) or ``bytes`` (binary)."""

    def on_timer(self, timer: Timer, out: Outbox) -> None:
        """A timer set with ``out.after``/``out.at`` came due (once, across
        handoffs; ``timer.late`` after a crash)."""

    def on_done(self, result: Any, out: Outbox) -> None:
        """An effect finished: its result, or the exception it raised."""

    def on_closed(self, conn: Conn, why: str, out: Outbox) -> None:
        """``conn`` ended: ``"lost"`` (opened again, ``on_open`` follows),
        ``"by_app"``, ``"max_age"`` (opened again), or ``"refused"``: an
        ``out.open`` whose URL can never be connected to (not ``ws://`` or
        ``wss://``, no host; the library logs why), never opened."""

    def on_takeover(self, mode: str, out: Outbox) -> None:
        """This worker now serves (``"handoff"`` or ``"recovery"``):
        reconcile what the state records as in flight."""

    def summary(self) -> dict:
        """A small JSON-able dict for ``supervisorctl status``; ``Decimal``
        and other values are shown as strings."""
        return {}


def run(
    app: Any,
    feeds: Iterable[str],
    *,
    checkpoint_ms: int = 1000,
    ca_file: Optional[str] = None,
    kernel_tls: str = "auto",
    max_conn_age_ms: Optional[int] = None,
    build_id: Optional[str] = None,
) -> int:
    """Serve ``app`` on ``feeds`` until it hands over, stops or fails, and
    return the process's exit code (``sys.exit(handoff.run(...))``).

    ``feeds`` are ``NAME=URL`` or bare URLs (named ``feed-0``, ``feed-1``...
    by position); a new version of the bot is matched to the connections by
    these names. Under a supervisor (``HANDOFF_FD`` set) the worker says who
    it is and is told to start fresh or take over; alone, it serves until
    SIGTERM or SIGINT. Exit codes: 0 handed over or stopped, 1 failed, 2 bad
    feed list, 4 takeover refused. ``build_id`` (default
    ``$HANDOFF_BUILD_ID``) is the label ``supervisorctl status`` shows.
    """
    if build_id is None:
        build_id = os.environ.get("HANDOFF_BUILD_ID") or f"{app.NAME} (python)"
    effect_loop = EffectLoop()
    try:
        return _native.run(
            app,
            list(feeds),
            effect_loop,
            build_id=build_id,
            checkpoint_ms=checkpoint_ms,
            ca_file=None if ca_file is None else os.fspath(ca_file),
            kernel_tls=kernel_tls,
            max_conn_age_ms=max_conn_age_ms,
        )
    finally:
        effect_loop.close()
