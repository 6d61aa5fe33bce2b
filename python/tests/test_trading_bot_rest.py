"""The reference Python trading bot's REST orders: in flight before they are
spawned and reconciled by their id, the exchange's answers read as the Rust
worker reads them, and the REST client's requests (over a mock transport). No
runtime, no network.
"""

import asyncio
import json

import pytest

from conftest import D, Out, conn, trade, tb, ts


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
    bot.on_takeover("handoff", out)
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


class ProbeRest(FakeRest):
    async def probe(self, cid, symbol, delay_s=0.0):
        return ts.OrderEvent("unknown", cid, probe=symbol)


def probes(out):
    return sorted((a["cid"], a["symbol"], a["delay_s"]) for n, a, _ in out.spawned if n == "probe")


def test_after_a_crash_the_dead_workers_orders_are_found_before_any_new_one():
    bot = tb.TradingBot(["btcusdt", "ethusdt"], rest=ProbeRest())
    bot.state.next_order_seq = 7  # the checkpoint's; the dead worker went on
    out = Out(bot)
    bot.on_takeover("recovery", out)
    assert probes(out) == [("hw-00000007", "BTCUSDT", 0.0), ("hw-00000007", "ETHUSDT", 0.0)]
    assert bot.probing is not None
    # hw-00000007 was a BUY, filled, on BTCUSDT; ETHUSDT has no such order.
    out = Out(bot)
    bot.on_done(ts.OrderEvent("filled", "hw-00000007", qty=D("0.01"), price=D("100"),
                              side="Buy", probe="BTCUSDT"), out)
    assert probes(out) == []  # ETHUSDT's answer is still to come
    bot.on_done(ts.OrderEvent("not_found", "hw-00000007", probe="ETHUSDT"), out)
    s = bot.state
    assert (s.next_order_seq, s.orders_sent, s.orders_filled, s.open_orders) == (8, 1, 1, {})
    assert s.positions_by_symbol()["BTCUSDT"].qty == D("0.01")  # on recovered/BTCUSDT
    assert probes(out) == [("hw-00000008", "BTCUSDT", 0.0), ("hw-00000008", "ETHUSDT", 0.0)]
    # No answer: asked again, after a while; a stale or repeated answer is ignored.
    out = Out(bot)
    bot.on_done(ts.OrderEvent("unknown", "hw-00000008", reason="timeout", probe="ETHUSDT"), out)
    assert probes(out) == [("hw-00000008", "ETHUSDT", 0.5)]
    bot.on_done(ts.OrderEvent("not_found", "hw-00000007", probe="ETHUSDT"), out)
    assert bot.probing["waiting"] == {"BTCUSDT", "ETHUSDT"}, "a stale answer counts for nothing"
    assert bot.summary()["recovery_asking_order_id"] == "hw-00000008"
    # Three ids in a row that no symbol has (one more than the two symbols)
    # end the search: every id asked is skipped, and orders may go again.
    for seq in (8, 9, 10):
        assert bot.probing is not None
        for sym in ("BTCUSDT", "ETHUSDT"):
            bot.on_done(ts.OrderEvent("not_found", f"hw-{seq:08d}", probe=sym), Out(bot))
    assert (bot.probing, s.next_order_seq) == (None, 11)


def test_while_the_search_runs_a_crossing_signal_places_no_order():
    bot = tb.TradingBot(["btcusdt"], rest=ProbeRest())
    bot.on_takeover("recovery", Out(bot))
    out = Out(bot)
    for i in range(1, 80):
        bot.on_message(conn(), trade(i, str(100 + (i % 40 - 20) * (1 if i < 30 else -1))), out)
    assert [n for n, _, _ in out.spawned] == [] and bot.state.orders_sent == 0

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
    # The order's side, when the answer has an order in it (a recovery books it).
    side = lambda status, body: tb.interpret("hw-1", status, json.dumps(body).encode()).side
    assert side(200, {"status": "FILLED", "executedQty": "1", "price": "2", "side": "SELL"}) == "Sell"
    assert side(200, {"status": "NEW", "side": "BUY"}) == "Buy"
    assert side(400, {"code": -1022, "msg": "Signature for this request is not valid."}) is None
    assert ev(200, {"status": "NEW", "side": 3})[0] == "unknown"


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
