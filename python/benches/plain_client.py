#!/usr/bin/env python3
"""The baseline of the Python per-message cost (benches/handoff, section 7):
a plain asyncio client on the ``websockets`` library, no handoff. It does
per message what ``bench_bot.py`` does: ``json.loads`` the message, count
the trade per stream, ack it on the same connection with
``{"method":"ack","stream":"<stream>","t":<id>}`` (one ``send`` per ack).
Like a standalone bot it serves until it is stopped::

    plain_client.py --feed URL [--feed URL...] [--symbols btcusdt,ethusdt]

``plain_client.py --parse-cost N`` instead times that per-message work
alone (the same function, on a trade message as the simulator sends it) N
times in this interpreter and prints the microseconds per message.
"""

import asyncio
import json
import sys
import time

# The ack, compact: {"method":"ack","stream":"btcusdt@trade","t":42}. One
# encoder made once (json.dumps with separators would make one per call).
ACK_JSON = json.JSONEncoder(separators=(",", ":")).encode

USAGE = "plain_client.py --feed URL [--feed URL...] [--symbols a,b] | --parse-cost N"

# A trade as exchange-sim sends it.
SAMPLE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1796536961927,"s":"BTCUSDT",'
    '"t":2,"p":"41992.95","q":"0.32941162","T":1796536961927,"m":false}}'
)


def handle(counters, name, msg):
    """The per-message work: the ack to send, or None for a non-trade."""
    data = json.loads(msg)
    trade = data.get("data")
    if not isinstance(trade, dict) or trade.get("e") != "trade":
        return None
    stream, t = data["stream"], trade["t"]
    key = name + "/" + stream
    c = counters.get(key)
    if c is None:
        c = counters[key] = [0, 0]
    c[0] += 1
    c[1] = t
    return ACK_JSON({"method": "ack", "stream": stream, "t": t})


async def one_connection(i, url, symbols, counters):
    try:
        from websockets.asyncio.client import connect
    except ImportError:  # websockets < 13
        from websockets import connect

    name = f"feed-{i}"
    # No permessage-deflate: the handoff runtime does not compress either.
    # asyncio sets TCP_NODELAY on its TCP sockets, like the runtime.
    async with connect(url, compression=None, max_size=None) as ws:
        params = [f"{s}@trade" for s in symbols]
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))
        async for msg in ws:
            ack = handle(counters, name, msg)
            if ack is not None:
                await ws.send(ack)


async def serve(feeds, symbols):
    counters = {}
    await asyncio.gather(*(one_connection(i, url, symbols, counters) for i, url in enumerate(feeds)))


def parse_cost(n):
    counters = {}
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(n):
            handle(counters, "feed-0", SAMPLE)
        best = min(best, (time.perf_counter_ns() - start) / n / 1000)
    return best


def main(argv):
    feeds, symbols, cost = [], ["btcusdt", "ethusdt"], None
    it = iter(argv)
    try:
        for flag in it:
            value = next(it, None)
            if value is None:
                raise ValueError(f"{flag} needs a value")
            if flag == "--feed":
                feeds.append(value)
            elif flag == "--symbols":
                symbols = [s.strip().lower() for s in value.split(",") if s.strip()]
            elif flag == "--parse-cost":
                cost = int(value)
            else:
                raise ValueError(f"unknown argument {flag!r}")
        if cost is None and not feeds:
            raise ValueError("at least one --feed is required")
    except ValueError as e:
        print(f"plain_client: {e}\nusage: {USAGE}", file=sys.stderr)
        return 2
    if cost is not None:
        print(f"{parse_cost(cost):.3f}")
        return 0
    asyncio.run(serve(feeds, symbols))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
