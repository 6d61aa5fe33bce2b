"""The reference Python bot's trading state, apart from the runtime: money
as ``rust_decimal`` computes it, the wire format (``market.rs``), books with
average-cost positions and the EMA signal (``book.rs``), and the state with
its orders and its JSON snapshot (``state.rs``). ``trading_bot.py`` is the
app around it; pack both (``python -m handoff.pack trading_bot.py --add
trading_state.py``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact
from typing import Any, Dict, List, NamedTuple, Optional

DP = 8  # decimal places kept for prices, quantities and PnL

# --- Decimals as rust_decimal computes them -------------------------------------
_CTX = Context(prec=100, rounding=ROUND_HALF_EVEN, Emin=-9999, Emax=9999)
_MANTISSA = Decimal(2) ** 96


def _fit(x: Decimal) -> Decimal:
    """``x`` as rust_decimal holds a result: at most 28 decimals and a
    mantissa under 2**96, rounded half to even."""
    scale = min(max(-x.as_tuple().exponent, 0), 28)
    while True:
        q = x.quantize(Decimal(1).scaleb(-scale), ROUND_HALF_EVEN, _CTX)
        if scale == 0 or q.copy_abs().scaleb(scale, _CTX) < _MANTISSA:
            return q.copy_abs() if q == 0 else q  # no negative zero
        scale -= 1


def add(a: Decimal, b: Decimal) -> Decimal:
    if a == 0 or b == 0:  # rust_decimal gives the other operand back, its scale kept
        return b if a == 0 else a
    return _fit(_CTX.add(a, b))


def sub(a: Decimal, b: Decimal) -> Decimal:
    if a == 0 or b == 0:
        return (b if b == 0 else b.copy_negate()) if a == 0 else a
    return _fit(_CTX.subtract(a, b))


def mul(a: Decimal, b: Decimal) -> Decimal:
    return Decimal(0) if a == 0 or b == 0 else _fit(_CTX.multiply(a, b))


def div(a: Decimal, b: Decimal) -> Decimal:
    """An exact quotient keeps the scale rust_decimal gives it (Python's ideal
    exponent is the same); an inexact one loses its trailing zeros, as there."""
    ctx = _CTX.copy()
    ctx.clear_flags()
    q = ctx.divide(a, b)
    if ctx.flags[Inexact]:
        q = _fit(q).normalize(_CTX)
    if q == 0:
        return Decimal(0)
    return q.quantize(Decimal(1), context=_CTX) if q.as_tuple().exponent > 0 else _fit(q)


def round_dp(x: Decimal, dp: int = DP) -> Decimal:
    """``Decimal::round_dp``: half to even, and only if ``x`` has more places."""
    if -x.as_tuple().exponent <= dp:
        return x
    r = x.quantize(Decimal(1).scaleb(-dp), ROUND_HALF_EVEN, _CTX)
    return r.copy_abs() if r == 0 else r


_DECIMAL = re.compile(r"[+-]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)\Z")


def parse_decimal(s: Any) -> Optional[Decimal]:
    """A decimal string as ``str::parse::<Decimal>`` reads it (no exponent)."""
    if not isinstance(s, str) or not _DECIMAL.match(s):
        return None
    return _fit(Decimal(s.replace("_", "")))


def plain(d: Decimal) -> str:
    """``Decimal::to_string``: its scale kept, never an exponent."""
    return format(d, "f")


def norm(d: Decimal) -> str:
    """``Decimal::normalize().to_string()``: "0", "0.01", "42000.1"."""
    return "0" if d == 0 else format(d.normalize(_CTX), "f")


def compact(v: Any) -> str:
    """What ``serde_json::json!(..).to_string()`` writes: compact, keys sorted."""
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _u64(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


# --- The wire format (market.rs) --------------------------------------------------
class Trade(NamedTuple):
    stream: str
    symbol: str
    id: int
    price: Decimal
    qty: Decimal


def parse_trade(text: str) -> Optional[Trade]:
    """A trade if ``text`` is one; anything else (answers, other events) is None."""
    try:
        env = json.loads(text)
    except ValueError:
        return None
    d = env.get("data") if isinstance(env, dict) else None
    if not isinstance(d, dict) or d.get("e") != "trade" or not isinstance(env.get("stream"), str):
        return None
    price, qty = parse_decimal(d.get("p")), parse_decimal(d.get("q"))
    if not isinstance(d.get("s"), str) or not _u64(d.get("t")) or price is None or qty is None:
        return None
    if not isinstance(d.get("m", False), bool):  # "buyer is maker", unused but typed
        return None
    return Trade(env["stream"], d["s"], d["t"], price, qty)


def subscribe(symbols: List[str]) -> str:
    params = [f"{s.lower()}@trade" for s in symbols]
    return compact({"method": "SUBSCRIBE", "params": params, "id": 1})


def ack(stream: str, trade_id: int) -> str:
    return compact({"method": "ack", "stream": stream, "t": trade_id})


# --- Books (book.rs) ----------------------------------------------------------------
@dataclasses.dataclass
class Position:
    qty: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    fills: int = 0

    def fill(self, side: str, qty: Decimal, price: Decimal) -> None:
        """A fill of ``qty`` (positive) at ``price``, average-cost accounting."""
        signed = qty if side == "Buy" else qty.copy_negate()
        self.fills += 1
        if self.qty == 0 or (self.qty > 0) == (not signed.is_signed()):
            new_qty = add(self.qty, signed)
            cost = add(mul(self.avg_price, self.qty.copy_abs()), mul(price, qty))
            self.avg_price = round_dp(div(cost, new_qty.copy_abs()))
            self.qty = new_qty
            return
        closing = min(qty, self.qty.copy_abs())
        direction = Decimal(1) if self.qty > 0 else Decimal(-1)
        gain = mul(mul(closing, sub(price, self.avg_price)), direction)
        self.realized_pnl = round_dp(add(self.realized_pnl, gain))
        self.qty = add(self.qty, signed)
        if self.qty == 0:
            self.avg_price = Decimal(0)
        elif qty > closing:  # flipped through zero: what is open was opened at `price`
            self.avg_price = price


@dataclasses.dataclass(frozen=True)
class SignalParams:
    fast_n: int = 8
    slow_n: int = 21
    cooldown: int = 25


def ema(prev: Decimal, price: Decimal, n: int, first: bool) -> Decimal:
    if first:
        return price
    alpha = div(Decimal(2), Decimal(n + 1))
    return round_dp(add(mul(price, alpha), mul(prev, sub(Decimal(1), alpha))))


@dataclasses.dataclass
class Signal:
    """Fast and slow EMAs of trade prices, a crossover rule, and a cooldown
    counted in trades (not wall time, so a run is reproducible)."""

    fast: Decimal = Decimal(0)
    slow: Decimal = Decimal(0)
    seen: int = 0
    regime: str = "Warmup"  # or "Above", "Below"
    cooldown: int = 0

    def update(self, price: Decimal, p: SignalParams) -> Optional[str]:
        """Feed one price: the new regime if a crossover is to be acted upon."""
        first = self.seen == 0
        self.fast = ema(self.fast, price, p.fast_n, first)
        self.slow = ema(self.slow, price, p.slow_n, first)
        self.seen += 1
        self.cooldown = max(self.cooldown - 1, 0)
        if self.seen < p.slow_n or self.fast == self.slow:
            return None
        now = "Above" if self.fast > self.slow else "Below"
        previous, self.regime = self.regime, now
        if previous == now or previous == "Warmup" or self.cooldown > 0:
            return None
        self.cooldown = p.cooldown
        return now


# --- State (state.rs) -----------------------------------------------------------------
@dataclasses.dataclass
class Cursor:
    last_id: int = 0
    trades: int = 0
    gaps: int = 0  # ids skipped
    repeats: int = 0  # ids seen again or out of order (ignored)


@dataclasses.dataclass
class Book:
    symbol: str
    position: Position = dataclasses.field(default_factory=Position)
    signal: Signal = dataclasses.field(default_factory=Signal)


@dataclasses.dataclass
class Order:
    client_id: str
    book: str  # "<connection>/<SYMBOL>"
    symbol: str
    side: str  # "Buy" or "Sell"
    qty: Decimal
    status: str  # "Paper"; "InFlight" (sent, answer unseen: unknown after a takeover); "Accepted"


@dataclasses.dataclass
class OrderEvent:
    """What an order effect learnt: ``kind`` is "filled", "accepted",
    "rejected", "not_found" (it never arrived) or "unknown" (no answer)."""

    kind: str
    client_id: str
    qty: Optional[Decimal] = None
    price: Optional[Decimal] = None
    reason: str = ""
    side: Optional[str] = None  # "Buy"/"Sell", as the exchange recorded the order
    probe: Optional[str] = None  # the symbol, when a recovery's probe asked (probe.rs)


UNKNOWN_ORDER = -2013  # Binance's "order does not exist"


def interpret(client_id: str, status: int, body: bytes) -> OrderEvent:
    """An answer of ``/api/v3/order`` (a placement or a query); ``side`` is
    the order's, when the answer has an order in it."""
    side: Optional[str] = None

    def ev(kind: str, reason: str = "", **kw: Any) -> OrderEvent:
        return OrderEvent(kind, client_id, reason=reason, side=side, **kw)
    try:
        a = json.loads(body)
        texts = ("status", "executedQty", "avgPrice", "price", "msg", "side")
        if not isinstance(a, dict) or any(type(a.get(k)) not in (str, type(None)) for k in texts):
            raise ValueError(f"not an order answer: {a!r:.200}")
        if type(a.get("code")) not in (int, type(None)):
            raise ValueError(f"code {a['code']!r} is not an integer")
    except ValueError as e:
        return ev("unknown", f"HTTP {status}: unreadable answer: {e}")
    if status >= 500:
        return ev("unknown", f"HTTP {status}: {a.get('msg') or ''}")
    side = {"BUY": "Buy", "SELL": "Sell"}.get(a.get("side") or "")
    if not 200 <= status < 300:
        if a.get("code") == UNKNOWN_ORDER:
            return ev("not_found")
        return ev("rejected", f"HTTP {status} {a.get('code') or 0}: {a.get('msg') or ''}")
    if a.get("status") == "FILLED":
        price = parse_decimal(a.get("avgPrice"))
        price = parse_decimal(a.get("price")) if price is None or price == 0 else price
        qty = parse_decimal(a.get("executedQty"))
        if qty is None or price is None:
            return ev("unknown", "FILLED without quantity or price")
        return ev("filled", qty=qty, price=price)
    if a.get("status") in ("NEW", "PARTIALLY_FILLED"):
        return ev("accepted")
    if a.get("status") is None:
        return ev("unknown", "answer without a status")
    return ev("rejected", f"order {a['status']}")


@dataclasses.dataclass(frozen=True)
class Strategy:
    signal: SignalParams = SignalParams()
    lot: Decimal = Decimal("0.01")
    rest: bool = False  # orders over REST (sent in flight), else on paper
    hold_orders: bool = False  # a recovery is still finding the crashed worker's orders


def client_id(seq: int) -> str:
    """The client order id of sequence number ``seq``."""
    return f"hw-{seq:08d}"


@dataclasses.dataclass
class State:
    cursors: Dict[str, Cursor] = dataclasses.field(default_factory=dict)  # "<conn>/<stream>"
    books: Dict[str, Book] = dataclasses.field(default_factory=dict)  # "<conn>/<SYMBOL>"
    open_orders: Dict[str, Order] = dataclasses.field(default_factory=dict)  # by client id
    next_order_seq: int = 0  # client ids are never reused: the sequence is state
    orders_sent: int = 0
    orders_filled: int = 0
    orders_rejected: int = 0
    notional: Dict[str, Decimal] = dataclasses.field(default_factory=dict)  # schema 2

    def apply(self, conn: str, t: Trade, strategy: Strategy) -> List[Order]:
        """One trade seen on ``conn``: fill its book's paper orders at this
        price, update the signal, and place an order (returned) if it crossed."""
        cursor = self.cursors.setdefault(f"{conn}/{t.stream}", Cursor())
        if cursor.trades > 0 and t.id <= cursor.last_id:
            cursor.repeats += 1
            return []
        if cursor.trades > 0:
            cursor.gaps += t.id - cursor.last_id - 1
        cursor.last_id, cursor.trades = t.id, cursor.trades + 1
        key = f"{conn}/{t.symbol}"
        for cid in sorted(self.open_orders):
            o = self.open_orders[cid]
            if o.book == key and o.status == "Paper":
                del self.open_orders[cid]
                self._fill(o, o.qty, t.price)
        book = self.books.setdefault(key, Book(t.symbol))
        regime = book.signal.update(t.price, strategy.signal)
        if regime is None:
            return []
        target = strategy.lot if regime == "Above" else strategy.lot.copy_negate()
        delta = sub(target, book.position.qty)
        pending = any(o.book == key for o in self.open_orders.values())
        if delta == 0 or pending or strategy.hold_orders:
            return []
        side, status = "Buy" if delta > 0 else "Sell", "InFlight" if strategy.rest else "Paper"
        cid = client_id(self.next_order_seq)
        order = Order(cid, key, t.symbol, side, delta.copy_abs(), status)
        self.next_order_seq += 1
        self.orders_sent += 1
        self.open_orders[order.client_id] = order
        return [order]

    def _fill(self, o: Order, qty: Decimal, price: Decimal) -> None:
        if o.book in self.books:
            self.books[o.book].position.fill(o.side, qty, price)
            self.orders_filled += 1
            traded = mul(qty, price).copy_abs()
            self.notional[o.book] = add(self.notional.get(o.book, Decimal(0)), traded)

    def on_order_event(self, ev: OrderEvent) -> None:
        """What the exchange said; "not_found" and "unknown" stay in flight."""
        if ev.kind == "filled" and ev.client_id in self.open_orders:
            self._fill(self.open_orders.pop(ev.client_id), ev.qty, ev.price)
        elif ev.kind == "accepted" and ev.client_id in self.open_orders:
            self.open_orders[ev.client_id].status = "Accepted"
        elif ev.kind == "rejected" and self.open_orders.pop(ev.client_id, None) is not None:
            self.orders_rejected += 1

    def adopt_found(self, cid: str, symbol: str, side: str, ev: OrderEvent) -> None:
        """An order a crashed worker sent after this state's checkpoint, found
        on the exchange by a recovery's probe: counted as sent, and booked on
        the first book of its symbol (by key; a ``recovered/<SYMBOL>`` book if
        there is none), as ``State::adopt_found``."""
        book = next((k for k, b in sorted(self.books.items()) if b.symbol == symbol), None)
        if book is None:
            book = f"recovered/{symbol}"
            self.books[book] = Book(symbol)
        self.orders_sent += 1
        if ev.kind == "rejected":
            self.orders_rejected += 1
            return
        if ev.kind not in ("filled", "accepted"):
            return
        qty = ev.qty if ev.kind == "filled" else Decimal(0)
        self.open_orders[cid] = Order(cid, book, symbol, side, qty, "InFlight")
        self.on_order_event(ev)

    def in_flight(self) -> List[Order]:
        return [o for _, o in sorted(self.open_orders.items()) if o.status == "InFlight"]

    def total_trades(self) -> int:
        return sum(c.trades for c in self.cursors.values())

    def positions_by_symbol(self) -> Dict[str, Position]:
        """Positions summed per symbol over every connection's book."""
        out: Dict[str, Position] = {}
        for _, book in sorted(self.books.items()):
            p, b = out.setdefault(book.symbol, Position()), book.position
            cost = add(mul(p.avg_price, p.qty), mul(b.avg_price, b.qty))
            p.qty = add(p.qty, b.qty)
            p.avg_price = Decimal(0) if p.qty == 0 else round_dp(div(cost, p.qty))
            p.realized_pnl = add(p.realized_pnl, b.realized_pnl)
            p.fills += b.fills
        return dict(sorted(out.items()))

    def encode(self, schema: int) -> bytes:
        """The snapshot: compact JSON, decimals as strings; schema 1 has no notional."""
        def enc(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {f.name: enc(getattr(v, f.name)) for f in dataclasses.fields(v)}
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            return plain(v) if isinstance(v, Decimal) else v
        doc = enc(self)
        if schema == 1:
            del doc["notional"]
        return compact(doc).encode()

    @classmethod
    def decode(cls, data: bytes, schema: int) -> "State":
        doc = json.loads(data)
        if schema == 1 and isinstance(doc, dict):
            if "notional" in doc:
                raise ValueError("a schema-1 state has no notional: schema 2 bytes?")
            doc["notional"] = {}
        return _load("State", doc)


_TYPES = {c.__name__: c for c in (State, Cursor, Book, Position, Signal, Order)}
_ENUMS = {"regime": ("Warmup", "Above", "Below"), "side": ("Buy", "Sell"),
          "status": ("Paper", "InFlight", "Accepted")}


def _load(t: str, v: Any) -> Any:
    """``v`` (snapshot JSON) as type ``t``, strictly: a field missing, unknown
    or of another type refuses the snapshot."""
    if t.startswith("Dict[str, ") and isinstance(v, dict):
        return {k: _load(t[10:-1], x) for k, x in v.items()}
    if t in _TYPES and isinstance(v, dict):
        fields = {f.name: f.type for f in dataclasses.fields(_TYPES[t])}
        if set(v) != set(fields) or any(v[k] not in _ENUMS[k] for k in _ENUMS.keys() & v.keys()):
            raise ValueError(f"not a {t}: {v!r:.200}")
        return _TYPES[t](**{k: _load(fields[k], x) for k, x in v.items()})
    if t == "Decimal" and parse_decimal(v) is not None:
        return parse_decimal(v)
    if (t == "int" and _u64(v)) or (t == "str" and isinstance(v, str)):
        return v
    raise ValueError(f"not a {t}: {v!r:.200}")
