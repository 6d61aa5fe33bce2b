"""The state helpers, and the two ways a bot's state is kept, across a
schema change and a rollback (what the supervisor does with the bytes:
version 1 snapshots, version 2 restores and later snapshots *as* schema 1
for version 1 to restore)."""

import pickle
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Dict, Optional

import pytest

import handoff
from handoff import state


class Side(Enum):
    BUY = "BUY"
    SELL = "SELL"


@dataclass
class Position:
    qty: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    fills: int = 0


@dataclass
class Order:
    client_id: str
    side: Side
    qty: Decimal


@dataclass
class StateV1:
    positions: Dict[str, Position] = field(default_factory=dict)
    open_orders: Dict[str, Order] = field(default_factory=dict)
    next_order_seq: int = 0


@dataclass
class StateV2(StateV1):
    # New in version 2: a compatible change (it has a default).
    notional: Dict[str, Decimal] = field(default_factory=dict)
    last_signal: Optional[str] = None


def sample_v2() -> StateV2:
    return StateV2(
        positions={"BTCUSDT": Position(Decimal("0.01"), Decimal("42000.10"), 3)},
        open_orders={"hw-00000001": Order("hw-00000001", Side.SELL, Decimal("0.02"))},
        next_order_seq=2,
        notional={"BTCUSDT": Decimal("1260.003")},
        last_signal="above",
    )


def test_round_trip_keeps_every_field_and_type():
    s = sample_v2()
    back = state.from_json(StateV2, state.to_json(s))
    assert back == s
    assert isinstance(back.positions["BTCUSDT"].qty, Decimal)
    assert back.open_orders["hw-00000001"].side is Side.SELL


def test_same_state_same_bytes():
    assert state.to_json(sample_v2()) == state.to_json(sample_v2())
    assert b'"42000.10"' in state.to_json(sample_v2()), "decimals keep their digits"


def test_missing_fields_take_defaults_and_unknown_fields_are_ignored():
    v1_bytes = state.to_json(StateV1(next_order_seq=5))
    up = state.from_json(StateV2, v1_bytes)
    assert up.next_order_seq == 5 and up.notional == {} and up.last_signal is None
    down = state.from_json(StateV1, state.to_json(sample_v2()))
    assert down.next_order_seq == 2 and not hasattr(down, "notional")


@pytest.mark.parametrize(
    "data, names",
    [
        (b"not json", "not JSON"),
        (b'{"positions": {"X": {"qty": 1.5}}}', "state.positions['X'].qty"),
        (b'{"next_order_seq": "7"}', "state.next_order_seq"),
        (b'{"open_orders": {"a": {"client_id": "a", "side": "HOLD", "qty": "1"}}}', "side"),
        (b'{"open_orders": {"a": {"side": "BUY", "qty": "1"}}}', "client_id: missing"),
        (b"[]", "expected an object"),
    ],
)
def test_bad_bytes_name_the_field(data, names):
    with pytest.raises(state.StateError, match=None) as e:
        state.from_json(StateV2, data)
    assert names in str(e.value)


# --- A bot in two versions, JSON dataclasses -------------------------------


class BotV1(handoff.App):
    NAME, SCHEMA = "state-test-bot", 1

    def __init__(self):
        self.state = StateV1()

    def snapshot(self):
        return state.to_json(self.state)

    def restore(self, schema, data, mode):
        if schema != 1:
            raise ValueError(f"version 1 reads schema 1, not {schema}")
        self.state = state.from_json(StateV1, data)


class BotV2(handoff.App):
    NAME, SCHEMA = "state-test-bot", 2
    READS_SCHEMAS = [1, 2]
    WRITES_SCHEMAS = [2, 1]

    def __init__(self):
        self.state = StateV2()

    def snapshot(self):
        return state.to_json(self.state)

    def snapshot_as(self, schema):
        if schema == 1:
            return state.to_json(StateV1(**{f: getattr(self.state, f) for f in ("positions", "open_orders", "next_order_seq")}))
        return self.snapshot()

    def restore(self, schema, data, mode):
        self.state = state.from_json(StateV2, data)


def test_json_upgrade_then_rollback_keeps_the_shared_state():
    v1 = BotV1()
    v1.state.positions["ETHUSDT"] = Position(Decimal("-0.5"), Decimal("3100"), 1)
    v1.state.next_order_seq = 9
    v2 = BotV2()
    v2.restore(1, v1.snapshot(), "handoff")
    assert v2.state.positions == v1.state.positions and v2.state.notional == {}
    v2.state.notional["ETHUSDT"] = Decimal("1550")
    v2.state.next_order_seq = 10
    back = BotV1()
    back.restore(1, v2.snapshot_as(1), "handoff")
    assert back.state.next_order_seq == 10
    assert back.state.positions == v2.state.positions
    with pytest.raises(ValueError):
        back.restore(2, v2.snapshot(), "handoff")


# --- The same with msgpack and with pickle of plain data -------------------


def plain_v1(positions, seq):
    return {"positions": positions, "next_order_seq": seq}


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_plain_data_upgrade_then_rollback(codec):
    if codec == "msgpack":
        msgpack = pytest.importorskip("msgpack", reason="pip install msgpack (scripts/python-env does)")
        dumps, loads = msgpack.packb, msgpack.unpackb
    else:
        dumps = lambda v: pickle.dumps(v, protocol=4)  # noqa: E731
        loads = pickle.loads
    # Version 1: decimals as strings (neither codec keeps Decimal portably).
    v1 = plain_v1({"BTCUSDT": {"qty": "0.01", "avg_price": "42000.1"}}, 3)
    blob1 = dumps(v1)
    # Version 2 reads schema 1: the new field starts empty.
    v2 = dict(loads(blob1))
    v2.setdefault("notional", {})
    v2["notional"]["BTCUSDT"] = "420.001"
    blob2 = dumps(v2)
    # Rollback: version 2 writes schema 1 by leaving its field out.
    as_v1 = {k: v for k, v in loads(blob2).items() if k != "notional"}
    back = loads(dumps(as_v1))
    assert back == v1
    assert Decimal(back["positions"]["BTCUSDT"]["qty"]) == Decimal("0.01")
