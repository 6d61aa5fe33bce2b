"""The asyncio loop that runs a bot's effects.

The runtime (in Rust) decides *when* an effect runs: only in the worker that
serves, never before it is told to go, and settled before a freeze. This
module only runs them: one event loop in a daemon thread of its own, so an
effect's HTTP client (httpx, aiohttp) lives on one loop for the life of the
worker. Callbacks (`on_message` and the rest) run on the runtime's thread and
must not block on an effect; its result comes back through `on_done`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class EffectLoop:
    """An asyncio loop in a thread, for effects (see the module doc)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, name="handoff-effects", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(
        self, awaitable: Awaitable[Any], done: Callable[[Any], None]
    ) -> concurrent.futures.Future:
        """Start `awaitable` on the loop; call `done` once with its result,
        or with the exception it raised (its cancellation included)."""
        task = asyncio.run_coroutine_threadsafe(_await(awaitable), self.loop)

        def settled(f: concurrent.futures.Future) -> None:
            if f.cancelled():
                done(asyncio.CancelledError())
                return
            exc = f.exception()
            done(exc if exc is not None else f.result())

        task.add_done_callback(settled)
        return task

    def close(self, timeout: float = 2.0) -> None:
        """Cancel what still runs and stop the loop."""

        async def cancel_all() -> None:
            tasks = [
                t for t in asyncio.all_tasks() if t is not asyncio.current_task()
            ]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
