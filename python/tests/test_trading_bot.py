"""Pure-logic tests of the reference Python trading bot
(``python/examples/trading_bot.py``): no runtime, no network.

The numbers are the Rust reference worker's (``worker/trading``): the book.rs
and market.rs test cases, and the schema-1 fixture the Rust worker wrote
(``tests/fixtures/trading-state-v1.bin``), replayed and compared field by
field, decimal strings included.
"""

import asyncio
import json
import pathlib
import sys
import time
import types
from decimal import Decimal

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "examples"))

_stub = None
try:
    import handoff  # noqa: F401
except ImportError:  # the package is not built: the logic needs only App
    _stub = types.ModuleType("handoff")
    _stub.App = type("App", (), {})
    _stub.run = lambda app, feeds, **kw: 0
    sys.modules["handoff"] = _stub

import trading_bot as tb  # noqa: E402
import trading_state as ts  # noqa: E402

if _stub is not None:  # the bot keeps it; other test modules see no package
    del sys.modules["handoff"]

D = Decimal


class Out:
    """A fake ``out``: records every call; ``spawned`` keeps the coroutines
    (closed, never run) with a copy of the open orders at spawn time."""

    def __init__(self, bot=None):
        self.calls, self.spawned, self.bot = [], [], bot

    def send(self, conn, msg):
        self.calls.append(("send", getattr(conn, "name", conn), msg))

    def after(self, seconds, key):
        self.calls.append(("after", seconds, key))

    def at(self, unix_ms, key):
        self.calls.append(("at", unix_ms, key))

    def open(self, name, url):
        self.calls.append(("open", name, url))

    def spawn(self, aw):
        orders = {k: o.status for k, o in self.bot.state.open_orders.items()} if self.bot else None
        self.spawned.append((aw.cr_code.co_name, aw.cr_frame.f_locals.copy(), orders))
        aw.close()
        self.calls.append(("spawn", aw.cr_code.co_name))

    def sends(self):
        return [c[2] for c in self.calls if c[0] == "send"]


def conn(id=0, name="feed-0"):
    return types.SimpleNamespace(id=id, name=name, url="ws://x", peer="x", tls=False)


def trade(id, price, symbol="BTCUSDT", qty="0.001"):
    return json.dumps(
        {
            "stream": f"{symbol.lower()}@trade",
            "data": {
                "e": "trade",
                "E": 1,
                "s": symbol,
                "t": id,
                "p": price,
                "q": qty,
                "T": 1,
                "m": True,
            },
        }
    )


def zigzag(i, base):
    """fixture_tests.rs sample_state's price of trade ``i``."""
    wave = ((i // 37) % 2) * 2 - 1
    return ts.plain(D(base * 100 + wave * (i % 37) * 7).scaleb(-2))


def feed(bot, n=600, conn_=None, out=None):
    out = out or Out(bot)
    for i in range(1, n + 1):
        for sym, base in (("BTCUSDT", 42_000), ("ETHUSDT", 2_200)):
            bot.on_message(conn_ or conn(), trade(i, zigzag(i, base), sym), out)
    return out


# --- book.rs ------------------------------------------------------------------------
def test_average_cost_accounting():
    p = ts.Position()
    p.fill("Buy", D("2"), D("100"))
    p.fill("Buy", D("2"), D("110"))
    assert (p.qty, p.avg_price) == (D("4"), D("105"))
    p.fill("Sell", D("1"), D("120"))
    assert (p.qty, p.avg_price, p.realized_pnl) == (D("3"), D("105"), D("15"))
    # Flip through zero: close 3 at 100 (-15), open 2 short at 100.
    p.fill("Sell", D("5"), D("100"))
    assert (p.qty, p.avg_price, p.realized_pnl) == (D("-2"), D("100"), D("0"))
    p.fill("Buy", D("2"), D("90"))
    assert (p.qty, p.avg_price, p.realized_pnl) == (D("0"), D("0"), D("20"))
    assert p.fills == 5


def test_average_price_rounds_to_8_places_half_even():
    p = ts.Position()
    p.fill("Buy", D("1"), D("1"))
    p.fill("Buy", D("2"), D("2"))
    assert ts.plain(p.avg_price) == "1.66666667"  # 5/3
    q = ts.Position()
    q.fill("Buy", D("0.00000002"), D("0.000000005"))
    q.fill("Buy", D("0.00000002"), D("0.000000005"))
    assert q.avg_price == D("0.00000000")  # 0.000000005: half to even


def test_crossover_with_cooldown():
    params = ts.SignalParams(fast_n=2, slow_n=4, cooldown=3)
    s, acted = ts.Signal(), []
    for price in [
        "100",
        "100",
        "100",
        "99",
        "98",
        "99",
        "101",
        "103",
        "104",
        "100",
        "97",
        "96",
        "95",
    ]:
        r = s.update(D(price), params)
        if r:
            acted.append((price, r))
    assert acted[0][1] == "Above", acted
    assert any(r == "Below" for _, r in acted), acted
    # Crossing back within the cooldown is not acted upon (the 2nd "101").
    s, acted = ts.Signal(), []
    for price in ["100"] * 3 + ["99", "98", "101", "104", "100", "96", "101", "104", "106"]:
        acted.append(s.update(D(price), params))
    assert acted[5:9] == ["Above", None, None, "Below"] and acted[9:] == [None] * 3, acted
    assert (s.regime, s.cooldown, ts.plain(s.fast), ts.plain(s.slow)) == (
        "Above",
        0,
        "104.87537469",
        "103.27236506",
    )


def test_decimal_arithmetic_is_rust_decimals():
    assert ts.div(D(2), D(22)) == D("0.0909090909090909090909090909")
    assert ts.plain(ts.div(D(2), D(9))) == "0.2222222222222222222222222222"
    assert ts.plain(ts.div(D("420.0010"), D("0.01"))) == "42000.10"
    assert ts.plain(ts.div(D("1.0"), D(8))) == "0.125"
    assert ts.plain(ts.round_dp(D("1.5"))) == "1.5"
    assert ts.plain(ts.round_dp(D("2.123456785"))) == "2.12345678"
    assert [ts.norm(D(s)) for s in ("0.00", "-0", "0.0100", "42000.10", "1E+2")] == [
        "0",
        "0",
        "0.01",
        "42000.1",
        "100",
    ]


# --- market.rs ----------------------------------------------------------------------
def test_parses_the_contract_example_and_tolerates_the_rest():
    t = ts.parse_trade(
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000000,"s":"BTCUSDT",'
        '"t":12345,"p":"42000.10","q":"0.00100000","T":1700000000000,"m":true,"x":1}}'
    )
    assert (t.id, ts.plain(t.price), t.symbol) == (12345, "42000.10", "BTCUSDT")
    for text in [
        '{"result":null,"id":1}',
        "not json",
        '{"stream":"x","data":{"e":"trade","t":1,"p":"bad","q":"1","s":"X"}}',
        '{"stream":"x","data":{"e":"trade","t":1,"p":"1e5","q":"1","s":"X"}}',
        '{"stream":"x","data":{"e":"trade","t":-1,"p":"1","q":"1","s":"X"}}',
    ]:
        assert ts.parse_trade(text) is None, text


def test_subscribe_on_open_and_a_fresh_start_begins_on_connection_0():
    bot = tb.TradingBot(
        ["btcusdt", "ethusdt"], timer_every_ms=250, runtime_feeds={"user": "ws://x/ws/key"}
    )
    out = Out()
    bot.on_open(conn(0), out)
    assert out.calls == [
        (
            "send",
            "feed-0",
            '{"id":1,"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"]}',
        ),
        ("after", 0.25, "tick-0"),
        ("open", "user", "ws://x/ws/key"),
    ]
    out = Out()
    bot.on_open(conn(3, "feed-1"), out)
    assert [c[0] for c in out.calls] == ["send"]
    out = Out()
    bot.on_open(conn(4, "user"), out)  # a user-data stream takes no subscription
    assert out.calls == []


def test_a_trade_is_acked_once_with_the_exact_text():
    bot, out = tb.TradingBot(["btcusdt"], ack=True), Out()
    bot.on_message(conn(), trade(7, "42000.10"), out)
    assert out.calls == [("send", "feed-0", '{"method":"ack","stream":"btcusdt@trade","t":7}')]
    bot.on_message(conn(), '{"result":null,"id":1}', out)
    bot.on_message(conn(), b"\x00binary", out)
    assert len(out.calls) == 1


def test_a_timer_is_reported_on_feed_0_and_sets_the_next_one():
    bot, out = tb.TradingBot(["btcusdt"], timer_every_ms=1000), Out()
    bot.on_timer(types.SimpleNamespace(key="tick-3", due_unix_ms=1_700_000_000_000, late=True), out)
    assert out.calls == [
        ("send", "feed-0", '{"key":"tick-3","late":true,"method":"timer"}'),
        ("at", 1_700_000_001_000, "tick-4"),
    ]
    out = Out()
    bot.on_timer(types.SimpleNamespace(key="other", due_unix_ms=1, late=False), out)
    assert out.calls == []


# --- state.rs -----------------------------------------------------------------------
def test_repeats_are_counted_not_applied_and_gaps_counted():
    bot, out = tb.TradingBot(["btcusdt"], ack=True), Out()
    for i in (1, 2, 2, 1, 5):
        bot.on_message(conn(), trade(i, "100"), out)
    c = bot.state.cursors["feed-0/btcusdt@trade"]
    assert (c.last_id, c.trades, c.gaps, c.repeats) == (5, 3, 2, 2)
    assert bot.state.books["feed-0/BTCUSDT"].signal.seen == 3
    assert len(out.sends()) == 5  # every trade seen is acked, as the Rust worker does


def test_paper_orders_fill_at_the_next_trade_price():
    bot = tb.TradingBot(["btcusdt", "ethusdt"])
    out = feed(bot, 600)
    assert out.spawned == []
    s = bot.state
    assert s.orders_sent > 2 and s.orders_filled >= s.orders_sent - 2
    assert all(o.status == "Paper" for o in s.open_orders.values())
    assert (
        s.next_order_seq == s.orders_sent and len(s.open_orders) == s.orders_sent - s.orders_filled
    )


def test_positions_sum_per_symbol_across_connections():
    s = ts.State()
    s.books["a/BTCUSDT"] = ts.Book("BTCUSDT", ts.Position(D("0.01"), D("100"), D("1.5"), 3))
    s.books["b/BTCUSDT"] = ts.Book("BTCUSDT", ts.Position(D("0.02"), D("103"), D("-0.5"), 2))
    s.books["c/ETHUSDT"] = ts.Book("ETHUSDT", ts.Position(D("-0.01"), D("7"), D("0"), 1))
    p = s.positions_by_symbol()
    # (100*0.01 + 103*0.02) / 0.03 = 102
    assert (
        p["BTCUSDT"].qty,
        p["BTCUSDT"].avg_price,
        p["BTCUSDT"].realized_pnl,
        p["BTCUSDT"].fills,
    ) == (D("0.03"), D("102"), D("1.0"), 5)
    assert (p["ETHUSDT"].qty, p["ETHUSDT"].avg_price) == (D("-0.01"), D("7"))
    s.books["d/ETHUSDT"] = ts.Book("ETHUSDT", ts.Position(D("0.01"), D("9"), D("0"), 1))
    assert s.positions_by_symbol()["ETHUSDT"].avg_price == 0


# --- schemas ------------------------------------------------------------------------
def test_snapshot_restore_round_trip():
    bot = tb.TradingBot(["btcusdt", "ethusdt"])
    feed(bot, 300)
    data = bot.snapshot()
    other = tb.TradingBot(["btcusdt", "ethusdt"])
    other.restore(1, data, "handoff")
    assert other.snapshot() == data and other.summary() == bot.summary()
    # Only schema-2 builds keep the traded notional across a handoff.
    assert other.state == ts.dataclasses.replace(bot.state, notional={})
    with pytest.raises(ValueError):
        other.restore(2, data, "handoff")  # a schema-1 build reads schema 1 only
    with pytest.raises(ValueError):
        other.restore(1, data[: len(data) // 2], "recovery")
    with pytest.raises(ValueError):
        other.restore(1, data.replace(b'"regime":"', b'"regime":"Not'), "handoff")
    assert other.snapshot() == data  # a refused restore changes nothing


def test_schema_2_rolls_back_to_1_and_upgrades_from_1():
    v2 = tb.TradingBotV2(["btcusdt", "ethusdt"])
    feed(v2, 600)
    assert v2.state.notional and all(n > 0 for n in v2.state.notional.values())
    summary = v2.summary()
    assert summary["schema"] == 2 and "traded_notional" in summary["positions"]["BTCUSDT"]
    # Rollback: the schema-1 build reads what v2 writes as schema 1.
    v1 = tb.TradingBot(["btcusdt", "ethusdt"])
    v1.restore(1, v2.snapshot_as(1), "handoff")
    assert v1.state.notional == {} and v1.summary()["digest"] == summary["digest"]
    assert "traded_notional" not in v1.summary()["positions"]["BTCUSDT"]
    with pytest.raises(ValueError):
        v1.snapshot_as(2)
    with pytest.raises(ValueError):
        v1.restore(1, v2.snapshot(), "handoff")  # schema-2 bytes are no schema-1 state
    # Upgrade: v2 reads schema 1 (notional starts empty), and its own.
    up = tb.TradingBotV2(["btcusdt", "ethusdt"])
    up.restore(1, v1.snapshot(), "handoff")
    assert up.state.notional == {} and up.summary()["digest"] == summary["digest"]
    again = tb.TradingBotV2(["btcusdt", "ethusdt"])
    again.restore(2, v2.snapshot(), "handoff")
    assert again.state == v2.state
    assert tb.TradingBotV2.NAME == tb.TradingBot.NAME
    assert (tb.TradingBotV2.READS_SCHEMAS, tb.TradingBotV2.WRITES_SCHEMAS) == ([1, 2], [1, 2])


def _bincode_state(data):
    """Decode the Rust worker's schema-1 State (bincode, varint encoding)."""
    pos = 0

    def u():
        nonlocal pos
        b = data[pos]
        pos += 1
        if b < 251:
            return b
        n = {251: 2, 252: 4, 253: 8}[b]
        pos += n
        return int.from_bytes(data[pos - n : pos], "little")

    def s():
        nonlocal pos
        n = u()
        pos += n
        return data[pos - n : pos].decode()

    def m(value):
        return {s(): value() for _ in range(u())}

    # Fields in declaration order (state.rs, book.rs); enums by variant index.
    def cursor():
        return dict(last_id=u(), trades=u(), gaps=u(), repeats=u())

    def book():
        symbol = s()
        position = dict(qty=s(), avg_price=s(), realized_pnl=s(), fills=u())
        regimes = ["Warmup", "Above", "Below"]
        signal = dict(fast=s(), slow=s(), seen=u(), regime=regimes[u()], cooldown=u())
        return dict(symbol=symbol, position=position, signal=signal)

    def order():
        statuses = ["Paper", "InFlight", "Accepted"]
        return dict(
            client_id=s(),
            book=s(),
            symbol=s(),
            side=["Buy", "Sell"][u()],
            qty=s(),
            status=statuses[u()],
        )

    state = dict(
        cursors=m(cursor),
        books=m(book),
        open_orders=m(order),
        next_order_seq=u(),
        orders_sent=u(),
        orders_filled=u(),
        orders_rejected=u(),
    )
    assert pos == len(data)
    return state


def test_the_same_trades_give_the_rust_workers_state_to_the_digit():
    """fixture_tests.rs: 2 000 trades of a zig-zag price on two symbols, on
    feed-0, fed to the Rust State::apply; here to the Python one."""
    fixture = REPO / "tests" / "fixtures" / "trading-state-v1.bin"
    if not fixture.exists():
        pytest.skip("no Rust fixture in this checkout")
    rust = _bincode_state(fixture.read_bytes())
    s, strategy = ts.State(), ts.Strategy()
    for i in range(1, 2001):
        for sym, base in (("BTCUSDT", 42_000), ("ETHUSDT", 2_200)):
            t = ts.Trade(
                f"{sym.lower()}@trade", sym, i, ts.parse_decimal(zigzag(i, base)), D("0.001")
            )
            s.apply("feed-0", t, strategy)
    mine = json.loads(s.encode(1))
    assert rust["orders_sent"] > 0 and rust["books"]
    assert mine == rust


# --- REST ---------------------------------------------------------------------------
class FakeRest:
    async def place(self, order):
        return ts.OrderEvent("filled", order.client_id)

    async def query(self, order, delay_s):
        return ts.OrderEvent("unknown", order.client_id)


def test_an_order_is_in_flight_before_it_is_spawned_and_reconciled_by_its_id():
    bot = tb.TradingBot(["btcusdt", "ethusdt"], rest=FakeRest())
    out = Out(bot)
    bot.on_message(conn(), trade(1, "100"), out)
    i = 1
    while not out.spawned:
        i += 1
        bot.on_message(conn(), trade(i, str(100 + (i % 40 - 20) * (1 if i < 30 else -1))), out)
    name, args, orders_then = out.spawned[0]
    assert name == "place" and args["order"].client_id == "hw-00000000"
    assert orders_then == {"hw-00000000": "InFlight"}  # recorded before the spawn
    order = args["order"]
    assert (order.qty, order.status, bot.state.orders_sent) == (D("0.01"), "InFlight", 1)
    # No answer: asked again after 500 ms, under the same id.
    out = Out(bot)
    bot.on_done(ts.OrderEvent("unknown", "hw-00000000", reason="timeout"), out)
    assert [(n, a["order"].client_id, a["delay_s"]) for n, a, _ in out.spawned] == [
        ("query", "hw-00000000", 0.5)
    ]
    bot.on_done(TimeoutError("cancelled"), out)  # an exception naming no order: logged
    exc = RuntimeError("boom")
    exc.client_id = "hw-00000000"
    bot.on_done(exc, out)
    assert len(out.spawned) == 2
    # It never arrived: sent again, same id; a takeover queries it at once.
    out = Out(bot)
    bot.on_done(ts.OrderEvent("not_found", "hw-00000000"), out)
    bot.on_takeover("recovery", out)
    assert [(n, a["order"].client_id) for n, a, _ in out.spawned] == [
        ("place", "hw-00000000"),
        ("query", "hw-00000000"),
    ]
    assert out.spawned[1][1]["delay_s"] == 0
    # Filled: the position follows, the order is done, nothing more to ask.
    bot.on_done(
        ts.OrderEvent("filled", "hw-00000000", qty=D("0.01000000"), price=D("101.5")), Out(bot)
    )
    p = bot.state.books[order.book].position
    assert (p.qty, p.avg_price, p.fills) == (
        D(order.qty if order.side == "Buy" else -order.qty),
        D("101.5"),
        1,
    )
    assert bot.state.open_orders == {} and bot.state.orders_filled == 1
    assert bot.state.notional[order.book] == D("1.015")
    out = Out(bot)
    bot.on_takeover("handoff", out)
    assert out.spawned == []


def test_exchange_answers_are_interpreted_as_the_rust_worker_does():
    def ev(status, body):
        e = tb.interpret(
            "hw-1", status, json.dumps(body).encode() if not isinstance(body, bytes) else body
        )
        return e.kind, e.qty, e.price

    assert ev(
        200, {"status": "FILLED", "executedQty": "0.01", "avgPrice": "0", "price": "42000.5"}
    ) == ("filled", D("0.01"), D("42000.5"))
    assert ev(200, {"status": "FILLED", "executedQty": "0.01", "avgPrice": "42001"})[2] == D(
        "42001"
    )
    assert ev(200, {"status": "FILLED", "executedQty": "0.01"})[0] == "unknown"
    assert ev(200, {"status": "NEW"})[0] == ev(200, {"status": "PARTIALLY_FILLED"})[0] == "accepted"
    assert ev(200, {"status": "EXPIRED"})[0] == "rejected"
    assert ev(200, {})[0] == "unknown"
    assert ev(400, {"code": -2013, "msg": "Order does not exist."})[0] == "not_found"
    assert ev(400, {"code": -1013, "msg": "bad qty"})[0] == "rejected"
    assert ev(503, {"code": -2013})[0] == "unknown"
    assert ev(200, b"<html>")[0] == "unknown"
    assert ev(200, {"status": 1})[0] == "unknown"


def test_the_rest_client_speaks_binance():
    httpx = pytest.importorskip("httpx")
    seen = []

    def answer(req):
        seen.append((req.method, req.url.path, dict(req.url.params), req.content))
        if req.method == "POST":
            return httpx.Response(
                200, json={"status": "FILLED", "executedQty": "0.02", "avgPrice": "7.5"}
            )
        return httpx.Response(400, json={"code": -2013, "msg": "Order does not exist."})

    rest = tb.Rest("http://exchange.test/", 5.0, None, transport=httpx.MockTransport(answer))
    order = ts.Order("hw-00000042", "feed-0/BTCUSDT", "BTCUSDT", "Sell", D("0.02"), "InFlight")

    async def both():
        return await rest.place(order), await rest.query(order, 0)

    placed, queried = asyncio.run(both())
    assert (placed.kind, placed.qty, placed.price) == ("filled", D("0.02"), D("7.5"))
    assert queried.kind == "not_found"
    assert seen[0] == (
        "POST",
        "/api/v3/order",
        {},
        b"symbol=BTCUSDT&side=SELL&type=MARKET&quantity=0.02&newClientOrderId=hw-00000042",
    )
    assert seen[1][:3] == (
        "GET",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "origClientOrderId": "hw-00000042"},
    )


# --- signing.rs -------------------------------------------------------------------
# Binance's documented example (SIGNED endpoint examples for POST /api/v3/order):
# the same triple is checked by worker/trading/src/signing.rs and the simulator.
DOC_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOC_PARAMS = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
DOC_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_signs_binances_documented_example():
    payload = f"{DOC_PARAMS}&recvWindow=5000&timestamp=1499827319559"
    assert tb.sign(DOC_SECRET.encode(), payload) == DOC_SIGNATURE
    keys = tb.ApiKeys(DOC_KEY, DOC_SECRET, "test")
    assert tb.signed(DOC_PARAMS, keys, 5000, 1499827319559) == (
        f"{payload}&signature={DOC_SIGNATURE}"
    )
    # Example 3 (query string and body): the signature covers both, joined as they are.
    mixed = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC"
        "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    )
    assert tb.sign(DOC_SECRET.encode(), mixed) == (
        "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
    )
    assert DOC_KEY not in repr(keys) and DOC_SECRET not in repr(keys)


def test_params_are_encoded_as_the_rust_worker_encodes_them():
    # The same input and text as signing.rs's test.
    assert tb.encode_params([("symbol", "BTCUSDT"), ("newClientOrderId", "a:b/c.d_e-f~g h&=")]) == (
        "symbol=BTCUSDT&newClientOrderId=a%3Ab%2Fc.d_e-f~g%20h%26%3D"
    )
    assert tb.encode_params([]) == ""


def test_the_rest_client_signs_like_binance():
    httpx = pytest.importorskip("httpx")
    seen = []

    def answer(req):
        seen.append(req)
        return httpx.Response(200, json={"status": "FILLED", "executedQty": "1", "avgPrice": "2"})

    keys = tb.ApiKeys("the-key", "the-secret", "test")
    rest = tb.Rest("http://exchange.test", 5.0, transport=httpx.MockTransport(answer), keys=keys,
                   recv_window_ms=7000)
    order = ts.Order("w:1/a", "feed-0/BTCUSDT", "BTCUSDT", "Buy", D("0.01"), "InFlight")

    async def both():
        return await rest.place(order), await rest.query(order, 0)

    placed, queried = asyncio.run(both())
    assert placed.kind == queried.kind == "filled"
    post, get = seen
    assert post.headers["x-mbx-apikey"] == get.headers["x-mbx-apikey"] == "the-key"
    assert post.headers["content-type"] == "application/x-www-form-urlencoded"
    for text in (post.content.decode(), get.url.query.decode()):
        payload, _, signature = text.rpartition("&signature=")
        assert signature == tb.sign(b"the-secret", payload)
        params, _, timestamp = payload.rpartition("&timestamp=")
        assert abs(int(timestamp) - time.time() * 1000) < 5000
        assert params.endswith("&recvWindow=7000")
    assert post.content.decode().startswith(
        "symbol=BTCUSDT&side=BUY&type=MARKET&quantity=0.01&newClientOrderId=w%3A1%2Fa&"
    )
    assert get.url.query.decode().startswith("symbol=BTCUSDT&origClientOrderId=w%3A1%2Fa&")


def test_refusals_of_keys_and_signatures_are_rejections_naming_the_fix():
    httpx = pytest.importorskip("httpx")
    order = ts.Order("hw-1", "feed-0/BTCUSDT", "BTCUSDT", "Buy", D("1"), "InFlight")
    keys = tb.ApiKeys("k", "s", "test")
    for status, code, with_keys, fix in [
        (401, -2014, None, "HANDOFF_API_KEY"),
        (401, -2015, keys, "API key"),
        (400, -1022, keys, "secret"),
        (400, -1021, keys, "clock"),
    ]:
        def answer(req, status=status, code=code):
            return httpx.Response(status, json={"code": code, "msg": "refused"})

        rest = tb.Rest("http://x", 5.0, transport=httpx.MockTransport(answer), keys=with_keys)
        event = asyncio.run(rest.place(order))
        assert event.kind == "rejected" and fix in event.reason, event


def _key_file(tmp_path, text, mode=0o600):
    path = tmp_path / "keys"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    path.chmod(mode)
    return str(path)


def test_api_keys_from_a_file_or_the_environment(tmp_path):
    path = _key_file(tmp_path, f"# keys\n\n  KEY = {DOC_KEY}\r\nSECRET={DOC_SECRET}  \n")
    keys = tb.load_api_keys(path, {"HANDOFF_API_KEY": "ignored", "HANDOFF_API_SECRET": "x"})
    assert (keys.key, keys.secret) == (DOC_KEY, DOC_SECRET.encode())
    for mode in (0o640, 0o604, 0o620, 0o644):
        with pytest.raises(ValueError, match="too open.*chmod 600"):
            tb.load_api_keys(_key_file(tmp_path, "KEY=k\nSECRET=s\n", mode), {})
    for text, want in [
        ("KEY=k\n", "no SECRET= line"),
        ("SECRET=s\n", "no KEY= line"),
        ("KEY=k\nSECRET=s\nKEY=k2\n", "line 3: given twice"),
        ("KEY=k\nsecret s\n", "line 2: expected KEY="),
        ("KEY=k\nPASSWORD=s\n", "line 2: unknown name"),
        ("KEY=k\nSECRET=\n", "is empty"),
        ("KEY=a b\nSECRET=s\n", "visible ASCII"),
        (b"KEY=k\n\xff\n", "line 2: not valid UTF-8"),
    ]:
        with pytest.raises(ValueError, match=want):
            tb.load_api_keys(_key_file(tmp_path, text), {})
    assert tb.load_api_keys(None, {}) is None
    keys = tb.load_api_keys(None, {"HANDOFF_API_KEY": " k ", "HANDOFF_API_SECRET": "s\n"})
    assert (keys.key, keys.secret) == ("k", b"s")
    with pytest.raises(ValueError, match="HANDOFF_API_KEY is set but HANDOFF_API_SECRET"):
        tb.load_api_keys(None, {"HANDOFF_API_KEY": "k"})
    with pytest.raises(ValueError, match="HANDOFF_API_SECRET is set but HANDOFF_API_KEY"):
        tb.load_api_keys(None, {"HANDOFF_API_SECRET": "s"})


# --- main ---------------------------------------------------------------------------
def test_main_passes_the_flags_to_run(monkeypatch):
    got = {}

    def run(app, feeds, **kw):
        got.update(app=app, feeds=feeds, **kw)
        return 0

    monkeypatch.setattr(tb.handoff, "run", run)
    monkeypatch.delenv("HANDOFF_BUILD_ID", raising=False)
    argv = "--feed ws://a --feed b=ws://b --ack --symbols solusdt --timer-every 250"
    argv += " --checkpoint-ms 500 --cooldown-trades 3 --runtime-feed user=ws://u/ws/k"
    assert tb.main(argv.split(), schema=2) == 0
    app = got["app"]
    assert isinstance(app, tb.TradingBotV2) and app.SCHEMA == 2 and app.ack
    assert (app.symbols, app.timer_every_ms, app.strategy.signal.cooldown) == (["solusdt"], 250, 3)
    assert got["feeds"] == ["ws://a", "b=ws://b"] and got["checkpoint_ms"] == 500
    assert (got["kernel_tls"], got["max_conn_age_ms"], got["ca_file"]) == ("auto", None, None)
    assert got["build_id"] == "py-trading-bot (schema 2)"
    assert app.runtime_feeds == {"user": "ws://u/ws/k"}
    tb.main(["--feed", "ws://a"])
    assert type(got["app"]) is tb.TradingBot and got["app"].symbols == ["btcusdt", "ethusdt"]
    assert got["app"].rest is None and not got["app"].ack and got["app"].runtime_feeds == {}
    for bad in ("--paper --rest http://x", "--runtime-feed a=ws://x --runtime-feed a=ws://y",
                "--api-key-file k", "--rest http://x --recv-window-ms 60001"):
        with pytest.raises(SystemExit):
            tb.main(["--feed", "ws://a", *bad.split()])


def test_main_signs_with_the_key_file_and_refuses_an_open_one(monkeypatch, tmp_path):
    pytest.importorskip("httpx")
    got = {}
    monkeypatch.setattr(tb.handoff, "run", lambda app, feeds, **kw: got.update(app=app) or 0)
    monkeypatch.delenv("HANDOFF_API_KEY", raising=False)
    monkeypatch.delenv("HANDOFF_API_SECRET", raising=False)
    path = _key_file(tmp_path, "KEY=k\nSECRET=s\n")
    argv = ["--feed", "ws://a", "--rest", "http://x", "--api-key-file", path]
    assert tb.main([*argv, "--recv-window-ms", "250"]) == 0
    rest = got["app"].rest
    assert (rest.keys.key, rest.keys.secret, rest.recv_window_ms) == ("k", b"s", 250)
    assert tb.main(["--feed", "ws://a", "--rest", "http://x"]) == 0
    assert got["app"].rest.keys is None
    monkeypatch.setenv("HANDOFF_API_KEY", "ek")
    monkeypatch.setenv("HANDOFF_API_SECRET", "es")
    assert tb.main(["--feed", "ws://a", "--rest", "http://x"]) == 0
    assert got["app"].rest.keys.key == "ek"
    got.clear()
    (tmp_path / "keys").chmod(0o644)
    assert tb.main(argv) == 2 and got == {}
