#!/usr/bin/env python3
"""The reference trading bot in Python, on the ``handoff`` package.

It mirrors the Rust reference worker (``worker/trading``, ``trading-worker``)
rule for rule and number for number, so either can serve the same exchange:

- each ``--feed`` connection subscribes to ``<symbol>@trade`` (``market.rs``)
  and, with ``--ack``, acknowledges each trade on the same connection;
- per-stream cursors count trades, gaps and repeats; one book per
  ``<connection>/<SYMBOL>`` holds a position (average cost, ``book.rs``) and
  an EMA 8/21 crossover signal with a cooldown counted in trades, trading a
  lot of 0.01 (``state.rs``, ``State::apply``);
- orders fill on paper at the book's next trade price (the default) or go to
  a Binance-style REST API (``--rest``, ``rest.rs``) under client order ids
  ``hw-%08d``; an order is recorded in flight *before* it is sent, and one of
  unknown status is reconciled by a query (after a takeover, or 500 ms after
  no answer), never sent under a new id; after a crash, the exchange is first
  asked which ids the dead worker used since the checkpoint (``probe.rs``);
- with an API key (``--api-key-file``, or ``HANDOFF_API_KEY`` and
  ``HANDOFF_API_SECRET``) orders are signed as Binance documents
  (``signing.rs``): ``X-MBX-APIKEY``, ``recvWindow``, ``timestamp`` and the
  hex HMAC-SHA256 ``signature`` of the exact form body or query string sent;
- ``--timer-every`` ticks, each reported on ``feed-0`` for the audit;
- snapshots in schema 1, or schema 2 (``TradingBotV2``, Rust's ``Trader<2>``:
  traded notional per book), which reads schema 1 and writes it for rollbacks.

Money is ``decimal.Decimal`` computed as ``rust_decimal`` computes it (a
96-bit mantissa, at most 28 decimals, half to even), rounded to 8 places where
the Rust code calls ``round_dp(8)``: the same trades give the same digits
(``python/tests`` replays the Rust worker's state fixture). Snapshots are JSON
(the Rust worker's are bincode): Python and Rust builds do not hand over to
each other.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import sys
import time
import urllib.parse
from decimal import Decimal
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import handoff
from trading_state import (  # the state, apart from the runtime
    Order,
    OrderEvent,
    SignalParams,
    State,
    Strategy,
    ack,
    add,
    client_id,
    compact,
    interpret,
    norm,
    parse_decimal,
    parse_trade,
    plain,
    subscribe,
)

log = logging.getLogger("trading_bot")

NAME = "py-trading-bot"
RECONCILE_RETRY = 0.5  # seconds before asking again about an order of unknown status

# --- Signed requests (signing.rs) ------------------------------------------------------
KEY_ENV, SECRET_ENV = "HANDOFF_API_KEY", "HANDOFF_API_SECRET"
MAX_KEY_FILE = 16 * 1024


class ApiKeys:
    """An API key and its secret; ``repr`` shows neither."""

    def __init__(self, key: str, secret: str, origin: str):
        if not key or len(key) > 256 or not all("!" <= c <= "~" for c in key):
            raise ValueError(f"the API key from {origin} must be 1 to 256 visible ASCII characters")
        if not secret:
            raise ValueError(f"the API secret from {origin} is empty")
        self.key, self.secret, self.origin = key, secret.encode(), origin

    def __repr__(self) -> str:
        return f"ApiKeys(key=<redacted>, secret=<redacted>, origin={self.origin!r})"


def load_api_keys(path: Optional[str], environ: Mapping[str, str]) -> Optional[ApiKeys]:
    """From ``path`` (lines ``KEY=...`` and ``SECRET=...``, blank lines and
    ``#`` comments ignored; no access for group or others, as ssh asks of a
    private key) if given, else from ``HANDOFF_API_KEY`` and
    ``HANDOFF_API_SECRET``; ``None`` if neither is set (orders go unsigned).
    Raises ``ValueError`` (or ``OSError``) naming what is wrong."""
    if path is None:
        key, secret = environ.get(KEY_ENV), environ.get(SECRET_ENV)
        if key is None and secret is None:
            return None
        if key is None or secret is None:
            set_, unset = (KEY_ENV, SECRET_ENV) if secret is None else (SECRET_ENV, KEY_ENV)
            raise ValueError(f"{set_} is set but {unset} is not: set both "
                             "(or neither, for unsigned orders)")
        return ApiKeys(key.strip(), secret.strip(), f"{KEY_ENV}/{SECRET_ENV}")
    with open(path, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise ValueError(f"--api-key-file {path}: permissions {mode:04o} are too open: "
                             "it holds a secret, so only its owner may have access "
                             f"(chmod 600 {path})")
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"--api-key-file {path}: larger than {MAX_KEY_FILE} bytes: not a key file")
    found: Dict[str, str] = {}
    for i, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise ValueError(f"--api-key-file {path}: line {i}: not valid UTF-8") from None
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if not eq:
            raise ValueError(f"--api-key-file {path}: line {i}: "
                             "expected KEY=<api key> or SECRET=<secret>")
        if name.strip() not in ("KEY", "SECRET"):
            raise ValueError(f"--api-key-file {path}: line {i}: unknown name: only KEY and SECRET")
        if name.strip() in found:
            raise ValueError(f"--api-key-file {path}: line {i}: given twice")
        found[name.strip()] = value.strip()
    for name in ("KEY", "SECRET"):
        if name not in found:
            raise ValueError(f"--api-key-file {path}: no {name}= line")
    return ApiKeys(found["KEY"], found["SECRET"], path)


def hint(code: int, signed: bool) -> Optional[str]:
    """What an operator should know of a refusal with Binance code ``code``,
    if it concerns the API key or the signature (``signing::hint``)."""
    if code in (-2014, -2015, -1102) and not signed:
        return ("orders are unsigned: give the bot its API key "
                "(HANDOFF_API_KEY and HANDOFF_API_SECRET, or --api-key-file)")
    return {
        -2014: "the exchange does not take this API key (or not for this)",
        -2015: "the exchange does not take this API key (or not for this)",
        -1022: "the API secret does not belong to the API key",
        -1021: "this host's clock is off from the exchange's, "
               "or the request took longer than --recv-window-ms",
    }.get(code)


def sign(secret: bytes, payload: str) -> str:
    """The hex HMAC-SHA256 of ``payload`` keyed by ``secret``."""
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def encode_params(pairs: Sequence[Tuple[str, str]]) -> str:
    """``name=value`` pairs joined by ``&``, percent-encoded but for
    ``A-Z a-z 0-9 - . _ ~`` (``signing::encode_params``, byte for byte)."""
    q = urllib.parse.quote
    return "&".join(f"{q(k, safe='')}={q(v, safe='')}" for k, v in pairs)


def signed(params: str, keys: ApiKeys, recv_window_ms: int, timestamp_ms: int) -> str:
    """``params`` then ``recvWindow``, ``timestamp`` and ``signature``: the text to send."""
    text = f"{params}{'&' if params else ''}recvWindow={recv_window_ms}&timestamp={timestamp_ms}"
    return f"{text}&signature={sign(keys.secret, text)}"


# --- Orders over REST (rest.rs; answers read by trading_state.interpret) ------------
class Rest:
    """The exchange's order API. Its coroutines run on the package's effect
    loop, where the httpx client is made (again if the loop is another).
    Parameters go as on Binance: a form body for a placement, the query
    string for a query; signed with ``keys``, if given."""

    def __init__(self, base: str, timeout_s: float, ca_file: Optional[str] = None,
                 transport: Any = None, keys: Optional[ApiKeys] = None,
                 recv_window_ms: int = 5000):
        import httpx  # only with --rest

        self.httpx, self.base, self.timeout_s = httpx, base.rstrip("/"), timeout_s
        self.keys, self.recv_window_ms = keys, recv_window_ms
        self.transport = transport  # tests give httpx.MockTransport
        self.verify: Any = True  # the public roots, and --ca-file's
        if ca_file:
            import ssl

            self.verify = ssl.create_default_context()
            self.verify.load_verify_locations(ca_file)
        self._client: Any = None
        self._loop: Any = None

    def _http(self) -> Any:
        if self._client is None or self._loop is not asyncio.get_running_loop():
            self._loop = asyncio.get_running_loop()
            self._client = self.httpx.AsyncClient(timeout=self.timeout_s, verify=self.verify,
                                                  follow_redirects=True, transport=self.transport)
        return self._client

    def _text(self, pairs: Sequence[Tuple[str, str]]) -> str:
        """The parameters as sent: signed, if this client has keys."""
        text = encode_params(pairs)
        if self.keys is not None:
            text = signed(text, self.keys, self.recv_window_ms, int(time.time() * 1000))
        return text

    def _headers(self) -> Dict[str, str]:
        return {} if self.keys is None else {"X-MBX-APIKEY": self.keys.key}

    async def place(self, order: Order) -> OrderEvent:
        """A market order, under the client id the state recorded."""
        body = self._text([("symbol", order.symbol), ("side", order.side.upper()),
                           ("type", "MARKET"), ("quantity", plain(order.qty)),
                           ("newClientOrderId", order.client_id)])
        headers = {"content-type": "application/x-www-form-urlencoded", **self._headers()}
        return await self._call(order.client_id, "POST", "", content=body.encode(),
                                headers=headers)

    async def query(self, order: Order, delay_s: float) -> OrderEvent:
        """What became of ``order``, asked after ``delay_s``."""
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        query = self._text([("symbol", order.symbol), ("origClientOrderId", order.client_id)])
        return await self._call(order.client_id, "GET", f"?{query}", headers=self._headers())

    async def probe(self, cid: str, symbol: str, delay_s: float = 0.0) -> OrderEvent:
        """A recovery's probe (``RestClient::probe``): whether the exchange has
        an order ``cid`` on ``symbol``; the answer says its side."""
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        query = self._text([("symbol", symbol), ("origClientOrderId", cid)])
        event = await self._call(cid, "GET", f"?{query}", headers=self._headers())
        event.probe = symbol
        return event

    async def _call(self, client_id: str, method: str, query: str, **kw: Any) -> OrderEvent:
        try:
            call = self._http().request(method, f"{self.base}/api/v3/order{query}", **kw)
            r = await asyncio.wait_for(call, self.timeout_s)  # a deadline for the whole call
        except Exception as e:  # no answer (in time): the status is unknown
            why = str(e) or f"no answer within {self.timeout_s:g} s"
            return OrderEvent("unknown", client_id, reason=f"{type(e).__name__}: {why}")
        except BaseException as e:  # cancelled: on_done still learns whose order it was
            e.client_id = client_id  # type: ignore[attr-defined]
            raise
        event = interpret(client_id, r.status_code, r.content)
        code = re.match(r"HTTP \d+ (-?\d+):", event.reason) if event.kind == "rejected" else None
        h = hint(int(code.group(1)), self.keys is not None) if code else None
        if h:
            event.reason = f"{event.reason} ({h})"
        return event


# --- The app (app.rs) -------------------------------------------------------------------
class TradingBot(handoff.App):
    NAME = NAME
    SCHEMA = 1
    READS_SCHEMAS = [1]
    WRITES_SCHEMAS = [1]

    def __init__(self, symbols: List[str], ack: bool = False, strategy: Optional[Strategy] = None,
                 rest: Optional[Rest] = None, timer_every_ms: Optional[int] = None,
                 runtime_feeds: Optional[Dict[str, str]] = None):
        self.state = State()
        self.symbols, self.ack, self.rest, self.timer_every_ms = symbols, ack, rest, timer_every_ms
        self.runtime_feeds = runtime_feeds or {}  # name -> URL, opened by the app itself
        self.strategy = dataclasses.replace(strategy or Strategy(), rest=rest is not None)
        self.probing: Optional[Dict[str, Any]] = None  # after a crash (probe.rs); not state

    def _send(self, order: Order, out: Any) -> None:
        """Send ``order``, recorded in flight already."""
        if self.rest is not None:
            out.spawn(self.rest.place(order))

    def _reconcile(self, order: Order, delay_s: float, out: Any) -> None:
        if self.rest is not None:
            out.spawn(self.rest.query(order, delay_s))

    def snapshot(self) -> bytes:
        return self.snapshot_as(self.SCHEMA)

    def snapshot_as(self, schema: int) -> bytes:
        if schema not in self.WRITES_SCHEMAS:
            raise ValueError(f"this build writes schemas {self.WRITES_SCHEMAS}, not {schema}")
        return self.state.encode(schema)

    def restore(self, schema: int, data: bytes, mode: str) -> None:
        if schema not in self.READS_SCHEMAS:
            raise ValueError(f"this build reads schemas {self.READS_SCHEMAS}, not {schema}")
        self.state = State.decode(data, schema)
        log.info("state restored: mode=%s schema=%d trades=%d",
                 mode, schema, self.state.total_trades())

    def summary(self) -> dict:
        """The operator's view: positions per symbol, trades per stream,
        orders, and a digest of the schema-1 state."""
        s, positions = self.state, {}
        for sym, p in s.positions_by_symbol().items():
            positions[sym] = {"qty": norm(p.qty), "avg_price": norm(p.avg_price),
                              "realized_pnl": norm(p.realized_pnl), "fills": p.fills}
            if self.SCHEMA >= 2:
                total = Decimal(0)
                for k, n in sorted(s.notional.items()):
                    total = add(total, n) if k.endswith(f"/{sym}") else total
                positions[sym]["traded_notional"] = norm(total)
        return {
            "schema": self.SCHEMA,
            "trades_processed": s.total_trades(),
            "orders_sent": s.orders_sent,
            "orders_filled": s.orders_filled,
            "orders_rejected": s.orders_rejected,
            "open_orders": len(s.open_orders),
            "positions": positions,
            "streams": {k: {"trades": c.trades, "last_id": c.last_id, "gaps": c.gaps}
                        for k, c in sorted(s.cursors.items())},
            "digest": hashlib.sha256(s.encode(1)).hexdigest()[:16],
            **({"recovery_asking_order_id": client_id(self.probing["seq"])}
               if self.probing else {}),
        }

    def on_open(self, conn: Any, out: Any) -> None:
        if conn.name == "user":  # a user-data stream takes no subscription: its events come
            return
        out.send(conn, subscribe(self.symbols))
        # The first connection of a fresh start (ids are never reused) starts
        # the ticks (each tick sets the next) and opens the runtime feeds.
        if conn.id == 0:
            if self.timer_every_ms is not None:
                out.after(self.timer_every_ms / 1000, "tick-0")
            for name, url in self.runtime_feeds.items():
                out.open(name, url)

    def on_closed(self, conn: Any, why: str, out: Any) -> None:
        log.info("connection ended: conn=%s name=%s why=%s", conn.id, conn.name, why)

    def on_timer(self, timer: Any, out: Any) -> None:
        """``tick-<n>``: tell the exchange (it counts each key: a tick fired
        twice or never shows there), then set ``tick-<n+1>`` one period after
        this one was due, so deadlines do not drift."""
        m = re.fullmatch(r"tick-\+?([0-9]+)", timer.key)
        if not m or int(m.group(1)) >= 2**64:
            return
        out.send("feed-0", compact({"method": "timer", "key": timer.key, "late": timer.late}))
        if self.timer_every_ms is not None:
            out.at(timer.due_unix_ms + self.timer_every_ms, f"tick-{int(m.group(1)) + 1}")

    def on_message(self, conn: Any, msg: Any, out: Any) -> None:
        trade = parse_trade(msg) if isinstance(msg, str) else None
        if trade is None:
            return
        strategy = self.strategy  # no order while a recovery finds the crashed worker's
        if self.probing is not None:
            strategy = dataclasses.replace(strategy, hold_orders=True)
        for order in self.state.apply(conn.name, trade, strategy):
            self._send(order, out)
        if self.ack:
            out.send(conn, ack(trade.stream, trade.id))

    def on_done(self, result: Any, out: Any) -> None:
        if isinstance(result, OrderEvent) and result.probe is not None:
            return self._on_probed(result, out)
        if isinstance(result, BaseException):
            if getattr(result, "client_id", None) is None:
                log.warning("an effect failed: %r (orders in flight are reconciled "
                            "at the next takeover)", result)
                return
            result = OrderEvent("unknown", result.client_id, reason=repr(result))
        if not isinstance(result, OrderEvent):
            log.warning("an effect returned %r, not an OrderEvent", result)
            return
        self.state.on_order_event(result)
        order = self.state.open_orders.get(result.client_id)
        if result.kind == "unknown":
            log.warning("order %s: status unknown (%s); will query",
                        result.client_id, result.reason)
            if order is not None:
                self._reconcile(order, RECONCILE_RETRY, out)
        elif result.kind == "not_found" and order is not None:
            # It never reached the exchange: send it again under the same
            # client id, so it can never be executed twice.
            log.info("order %s never arrived; sending it again", result.client_id)
            self._send(order, out)
        elif result.kind == "rejected":
            log.warning("order %s rejected: %s", result.client_id, result.reason)

    def on_takeover(self, mode: str, out: Any) -> None:
        unknown = self.state.in_flight()
        if unknown:
            log.info("reconciling %d orders of unknown status (%s)", len(unknown), mode)
        for order in unknown:
            self._reconcile(order, 0.0, out)
        if mode == "recovery":
            self._start_probing(out)

    # --- After a crash (probe.rs): ask the exchange for each id from the checkpoint's
    # next_order_seq on, on every symbol; book what it has, skip every id asked, and
    # place nothing until more ids in a row than there are books are unused.
    def _start_probing(self, out: Any) -> None:
        if self.rest is None or not self.symbols:
            return
        seq = self.state.next_order_seq
        window = max(len(self.state.books), len(self._symbols())) + 1
        log.info("recovery: asking the exchange which order ids the crashed worker used, "
                 "from %s (window %d)", client_id(seq), window)
        self.probing = {"seq": seq, "waiting": set(), "found": False, "misses": 0, "window": window}
        self._probe_next(out)

    def _symbols(self) -> set:
        return {s.upper() for s in self.symbols}  # as the exchange names them, each once

    def _probe_next(self, out: Any) -> None:
        p, rest = self.probing, self.rest
        if p is None or rest is None:
            return
        p["waiting"], p["found"] = self._symbols(), False
        for symbol in sorted(p["waiting"]):
            out.spawn(rest.probe(client_id(p["seq"]), symbol))

    def _on_probed(self, ev: OrderEvent, out: Any) -> None:
        p, symbol = self.probing, ev.probe
        if p is None or ev.client_id != client_id(p["seq"]) or symbol not in p["waiting"]:
            return
        if ev.kind == "unknown" or (ev.kind == "rejected" and ev.side is None):
            # No answer, or the query itself refused: ask again.
            log.warning("recovery: no answer about %s on %s (%s); asking again",
                        ev.client_id, symbol, ev.reason)
            if self.rest is not None:
                out.spawn(self.rest.probe(ev.client_id, symbol, RECONCILE_RETRY))
            return
        if ev.kind != "not_found":
            p["found"] = True
            if ev.side is None:
                log.warning("recovery: %s on %s has no side; not booked", ev.client_id, symbol)
            else:
                log.info("recovery: an order the crashed worker sent: %s %s %s (%s)",
                         ev.client_id, symbol, ev.side, ev.kind)
                self.state.adopt_found(ev.client_id, symbol, ev.side, ev)
                resting = self.state.open_orders.get(ev.client_id)
                if resting is not None:  # its fill is asked for like any other's
                    self._reconcile(resting, RECONCILE_RETRY, out)
        p["waiting"].discard(symbol)
        if p["waiting"]:
            return
        # Every symbol has answered: this id is used up, whoever used it.
        self.state.next_order_seq = max(self.state.next_order_seq, p["seq"] + 1)
        p["misses"] = 0 if p["found"] else p["misses"] + 1
        p["seq"] += 1
        if p["misses"] < p["window"]:
            return self._probe_next(out)
        log.info("recovery: the crashed worker's orders are booked; orders go from %s",
                 client_id(p["seq"]))
        self.probing = None


class TradingBotV2(TradingBot):
    """The next build: schema 2 (traded notional per book); it reads schema 1
    and writes it for a rollback."""

    SCHEMA = 2
    READS_SCHEMAS = [1, 2]
    WRITES_SCHEMAS = [1, 2]


# --- Flags (lib.rs: Args) -----------------------------------------------------------
def _ms(s: str) -> int:
    if not re.fullmatch(r"\+?[0-9]+", s) or int(s) >= 2**64:
        raise argparse.ArgumentTypeError(f"{s!r}: not a number of milliseconds")
    return int(s)


def _feeds(specs: List[str]) -> Dict[str, str]:
    """``NAME=URL`` or a bare URL (named ``feed-<i>``), as ``Feed::from_specs``."""
    feeds: Dict[str, str] = {}
    for i, spec in enumerate(specs):
        name, eq, url = spec.partition("=")
        if not eq or ":" in name or "/" in name:
            name, url = f"feed-{i}", spec
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or not url or name in feeds:
            raise ValueError(f"{spec!r}: a bad, empty or repeated feed")
        feeds[name] = url
    return feeds


def parse_args(argv: Optional[List[str]], schema: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trading_bot", description="A trading bot that survives "
                                "upgrades with its connections and state (trading-worker's twin).")
    p.add_argument("--feed", dest="feeds", action="append", required=True, metavar="[NAME=]URL",
                   help="a ws:// or wss:// feed; a bare URL is named feed-<i> by its position")
    p.add_argument("--ca-file", help="PEM CA certificates trusted for wss:// and https://")
    p.add_argument("--kernel-tls", choices=("auto", "off", "require"), default="auto")
    p.add_argument("--symbols", action="extend", type=lambda s: s.split(","),
                   help="symbols to subscribe to, comma-separated (default btcusdt,ethusdt)")
    p.add_argument("--ack", action="store_true", help="acknowledge each processed trade")
    p.add_argument("--paper", action="store_true", help="paper trading (default without --rest)")
    p.add_argument("--rest", metavar="URL", help="send orders to this exchange REST API; "
                   "signed with an API key (--api-key-file, or HANDOFF_API_KEY and "
                   "HANDOFF_API_SECRET), unsigned without one")
    p.add_argument("--api-key-file", metavar="PATH",
                   help="the API key and secret signing --rest orders: lines KEY=<api key> and "
                   "SECRET=<secret key> (# comments ignored); refused unless only its owner may "
                   "read it (chmod 600); takes precedence over HANDOFF_API_KEY and "
                   "HANDOFF_API_SECRET. Never on the command line, never logged")
    p.add_argument("--recv-window-ms", type=_ms, default=5000, metavar="MS",
                   help="how long after its timestamp a signed request stays valid "
                   "(Binance's recvWindow, at most 60000; 5000)")
    p.add_argument("--order-timeout-ms", type=_ms, default=5000, metavar="MS",
                   help="past it an order's status is unknown: it is queried (5000)")
    p.add_argument("--cooldown-trades", type=int, default=25, metavar="N",
                   help="trades to wait after acting on a crossover (25)")
    p.add_argument("--checkpoint-ms", type=_ms, default=1000, metavar="MS")
    p.add_argument("--timer-every", type=_ms, metavar="MS", help="tick every MS, told on feed-0")
    p.add_argument("--runtime-feed", dest="runtime_feeds", action="append", default=[],
                   metavar="NAME=URL", help="a connection the app opens itself on a fresh start")
    p.add_argument("--max-conn-age-ms", type=_ms, metavar="MS",
                   help="reopen a connection once it is this old")
    p.add_argument("--schema", type=int, choices=(1, 2), default=schema, help="the schema written")
    args = p.parse_args(argv)
    if args.paper and args.rest:
        p.error("--paper and --rest exclude each other")
    if args.api_key_file and not args.rest:
        p.error("--api-key-file needs --rest")
    if not 1 <= args.recv_window_ms <= 60_000:
        p.error("--recv-window-ms: from 1 to 60000")
    if not 0 <= args.cooldown_trades < 2**32:
        p.error("--cooldown-trades: out of range")
    args.symbols = args.symbols or ["btcusdt", "ethusdt"]
    try:
        args.runtime_feeds = _feeds(args.runtime_feeds)
    except ValueError as e:
        p.error(f"--runtime-feed: {e}")
    return args


def main(argv: Optional[List[str]] = None, schema: Optional[int] = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    args = parse_args(argv, schema or 1)
    rest = None
    if args.rest:
        try:
            keys = load_api_keys(args.api_key_file, os.environ)
        except (OSError, ValueError) as e:
            log.error("%s", e)
            return 2
        try:
            rest = Rest(args.rest, args.order_timeout_ms / 1000, args.ca_file, keys=keys,
                        recv_window_ms=args.recv_window_ms)
        except (ImportError, OSError, ValueError) as e:
            log.error("cannot set up the REST client: %s", e)
            return 2
    strategy = Strategy(signal=SignalParams(cooldown=args.cooldown_trades))
    bot = (TradingBotV2 if args.schema == 2 else TradingBot)(
        args.symbols, args.ack, strategy, rest, args.timer_every, args.runtime_feeds)
    build_id = os.environ.get("HANDOFF_BUILD_ID") or f"{NAME} (schema {args.schema})"
    return handoff.run(bot, args.feeds, checkpoint_ms=args.checkpoint_ms, ca_file=args.ca_file,
                       kernel_tls=args.kernel_tls, max_conn_age_ms=args.max_conn_age_ms,
                       build_id=build_id)


if __name__ == "__main__":
    sys.exit(main())
