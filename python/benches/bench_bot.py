#!/usr/bin/env python3
"""The Python side of the benchmark harness (benches/handoff, section 7): a
handoff bot doing what ``bench-worker`` does, in Python.

It subscribes to ``<symbol>@trade`` on every feed, parses each message with
``json.loads``, counts trades per stream and acks each one on its
connection (``{"method":"ack","stream":"<stream>","t":<id>}``). It takes
``bench-worker``'s flags, so the harness starts it the same way, standalone
or packed under the supervisor::

    bench_bot.py --feed URL [--feed URL...] [--symbols btcusdt,ethusdt] [--ack]
                 [--ballast-bytes N] [--checkpoint-ms MS] [--timings FILE]

Its snapshot is the counters as JSON, then ``--ballast-bytes`` opaque bytes.
``--timings FILE`` appends the lines ``bench-worker`` writes, with
``CLOCK_MONOTONIC`` nanoseconds (``time.monotonic_ns``), comparable across
processes: ``snapshot PID START_NS DUR_NS BYTES``, ``restore PID START_NS
DUR_NS BYTES`` and ``first PID NS`` (first message after a restore).
"""

import json
import os
import sys
import time

import handoff

# The ack, compact: {"method":"ack","stream":"btcusdt@trade","t":42}. One
# encoder made once (json.dumps with separators would make one per call).
ACK_JSON = json.JSONEncoder(separators=(",", ":")).encode

USAGE = (
    "bench_bot.py --feed URL [--feed URL...] [--symbols a,b] [--ack] "
    "[--ballast-bytes N] [--checkpoint-ms MS] [--timings FILE]"
)


def parse_args(argv):
    args = {
        "feeds": [],
        "symbols": ["btcusdt", "ethusdt"],
        "ack": False,
        "ballast_bytes": 0,
        "checkpoint_ms": 1000,
        "timings": None,
    }
    it = iter(argv)
    for flag in it:
        if flag == "--ack":
            args["ack"] = True
            continue
        if flag in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if flag not in ("--feed", "--symbols", "--ballast-bytes", "--checkpoint-ms", "--timings"):
            raise ValueError(f"unknown argument {flag!r}")
        value = next(it, None)
        if value is None:
            raise ValueError(f"{flag} needs a value")
        if flag == "--feed":
            args["feeds"].append(value)
        elif flag == "--symbols":
            args["symbols"] = [s.strip().lower() for s in value.split(",") if s.strip()]
        elif flag == "--ballast-bytes":
            args["ballast_bytes"] = int(value)
        elif flag == "--checkpoint-ms":
            args["checkpoint_ms"] = max(1, int(value))
        else:
            args["timings"] = value
    if not args["feeds"]:
        raise ValueError("at least one --feed is required")
    return args


class Timings:
    """Appends one line per event to the timings file (one write per line)."""

    def __init__(self, path):
        self.fd = None if path is None else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def line(self, what, *fields):
        if self.fd is not None:
            os.write(self.fd, (" ".join([what, str(self.pid), *map(str, fields)]) + "\n").encode())


class BenchBot(handoff.App):
    NAME, SCHEMA = "bench-bot", 1

    def __init__(self, symbols, ack, ballast_bytes, timings):
        self.symbols = symbols
        self.ack = ack
        self.ballast_bytes = ballast_bytes
        self.timings = timings
        # Seeded once, on the first fresh open; then carried by the snapshots.
        self.seeded = False
        # "feed-0/btcusdt@trade" -> [trades, last id]
        self.counters = {}
        self.ballast = b""
        # Waiting for the first message after a restore (the `first` line).
        self.restored = False

    def snapshot(self):
        start = time.monotonic_ns()
        head = json.dumps({"seeded": self.seeded, "counters": self.counters}, separators=(",", ":")).encode()
        data = len(head).to_bytes(4, "big") + head + self.ballast
        self.timings.line("snapshot", start, time.monotonic_ns() - start, len(data))
        return data

    def restore(self, schema, data, mode):
        start = time.monotonic_ns()
        n = int.from_bytes(data[:4], "big")
        head = json.loads(data[4 : 4 + n])
        self.seeded = head["seeded"]
        self.counters = head["counters"]
        self.ballast = bytes(data[4 + n :])
        self.timings.line("restore", start, time.monotonic_ns() - start, len(data))
        self.restored = True

    def on_open(self, conn, out):
        if not self.seeded:
            self.seeded = True
            self.ballast = os.urandom(self.ballast_bytes)
        params = [f"{s}@trade" for s in self.symbols]
        out.send(conn, json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))

    def on_message(self, conn, msg, out):
        if self.restored:
            self.restored = False
            self.timings.line("first", time.monotonic_ns())
        data = json.loads(msg)
        trade = data.get("data")
        if not isinstance(trade, dict) or trade.get("e") != "trade":
            return
        stream, t = data["stream"], trade["t"]
        key = conn.name + "/" + stream
        c = self.counters.get(key)
        if c is None:
            c = self.counters[key] = [0, 0]
        c[0] += 1
        c[1] = t
        if self.ack:
            out.send(conn, ACK_JSON({"method": "ack", "stream": stream, "t": t}))

    def summary(self):
        return {
            "trades": sum(c[0] for c in self.counters.values()),
            "streams": len(self.counters),
            "ballast_bytes": len(self.ballast),
        }


def main(argv):
    try:
        a = parse_args(argv)
    except ValueError as e:
        print(f"bench_bot: {e}\nusage: {USAGE}", file=sys.stderr)
        return 2
    bot = BenchBot(a["symbols"], a["ack"], a["ballast_bytes"], Timings(a["timings"]))
    return handoff.run(bot, a["feeds"], checkpoint_ms=a["checkpoint_ms"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
