#!/usr/bin/env python3
"""A bot for the runtime's tests: acks every trade, and reports on stdout
what the tests look for (effects' results, errors it provoked, where the
native module came from)."""

import asyncio
import json
import sys

import handoff


def report(*parts):
    print(*parts, flush=True)


class Probe(handoff.App):
    NAME, SCHEMA = "probe", 1

    def __init__(self, raise_every, open_url=None):
        self.trades = 0
        self.raise_every = raise_every
        self.kept_out = None
        self.open_url = open_url

    def snapshot(self):
        return json.dumps({"trades": self.trades}).encode()

    def restore(self, schema, data, mode):
        self.trades = json.loads(data)["trades"]

    def on_open(self, conn, out):
        report("native", handoff._native.__file__)
        out.send(conn, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
        out.spawn(self.answer(42))
        out.spawn(self.fail())
        self.kept_out = out
        for bad in (lambda: out.spawn(self.answer), lambda: out.send(conn, object()), lambda: out.after(-1, "x")):
            try:
                bad()
            except (TypeError, ValueError) as e:
                report("refused", type(e).__name__, e)
        out.after(0.05, "tick")
        if self.open_url:
            out.open("extra", self.open_url)

    def on_closed(self, conn, why, out):
        report("closed", conn.name, why, conn.url)

    async def answer(self, n):
        await asyncio.sleep(0.01)
        return n

    async def fail(self):
        await asyncio.sleep(0.01)
        raise ValueError("no such order")

    def on_done(self, result, out):
        if isinstance(result, Exception):
            report("done-exception", type(result).__name__, result)
        else:
            report("done", result)

    def on_timer(self, timer, out):
        try:
            self.kept_out.send("feed-0", "late")
        except RuntimeError as e:
            report("stale-outbox", e)
        report("timer", timer.key, timer.late)

    def on_message(self, conn, msg, out):
        data = json.loads(msg)
        if data.get("data", {}).get("e") != "trade":
            return
        self.trades += 1
        out.send(conn, json.dumps({"method": "ack", "stream": data["stream"], "t": data["data"]["t"]}, separators=(",", ":")))
        if self.raise_every and self.trades % self.raise_every == 0:
            raise KeyError(f"provoked at trade {self.trades}")

    def summary(self):
        return {"trades": self.trades}


if __name__ == "__main__":
    raise_every = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    open_url = sys.argv[3] if len(sys.argv) > 3 else None
    sys.exit(handoff.run(Probe(raise_every, open_url), [sys.argv[1]]))
