"""The reference Python trading bot's snapshots: restore round trips, schema 2
rolling back to 1 and upgrading from it, and the schema-1 fixture the Rust
worker wrote (``tests/fixtures/trading-state-v1.bin``), replayed and compared
field by field, decimal strings included. No runtime, no network.
"""

import json

import pytest

from conftest import REPO, D, feed, tb, ts, zigzag


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
