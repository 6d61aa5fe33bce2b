"""Pure-logic tests of the reference Python trading bot
(``python/examples/trading_bot.py``): no runtime, no network. Positions and
the signal (book.rs), the wire format and the bot's callbacks (market.rs),
trades applied to the state (state.rs): the numbers are the Rust reference
worker's (``worker/trading``), its test cases.
"""

import types

from conftest import D, Out, conn, feed, trade, tb, ts


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
