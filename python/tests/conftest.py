"""Fixtures: the exchange simulator and bots as real processes; and the
reference trading bot's modules with fakes of the runtime, shared by its
pure-logic tests (test_trading_bot_*.py).

The simulator is the `exchange-sim` binary of this repository's build
(`$HANDOFF_BIN_DIR`, default `target/debug`: `cargo build` or `cargo test`
makes it). Bots run under the interpreter running pytest, as a bot would.
"""

import json
import os
import subprocess
import sys
import threading
import types
import queue
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "python" / "examples"


def bin_dir() -> Path:
    return Path(os.environ.get("HANDOFF_BIN_DIR", REPO / "target" / "debug"))


class Sim:
    def __init__(self, args):
        exe = bin_dir() / "exchange-sim"
        if not exe.exists():
            pytest.fail(f"{exe} is missing: build the workspace first (cargo build), or set HANDOFF_BIN_DIR")
        self.proc = subprocess.Popen(
            [str(exe), "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening "), f"the simulator said {line!r}"
        self.addr = line.split(" ", 1)[1]

    @property
    def ws_url(self):
        return f"ws://{self.addr}/ws"

    def get(self, path, timeout=30):
        with urllib.request.urlopen(f"http://{self.addr}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def audit_when_acked(self, ms=20000):
        return self.get(f"/audit?wait_acked_ms={ms}", timeout=ms / 1000 + 5)

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def sim(request):
    marker = request.node.get_closest_marker("sim_args")
    s = Sim(list(marker.args) if marker else [])
    yield s
    s.close()


class Proc:
    """A bot process whose stdout lines are read as they come."""

    def __init__(self, argv, cwd=None, env=None):
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line.rstrip("\n"))

    def expect(self, prefix, timeout=20):
        """The next stdout line that starts with `prefix` (fails on exit)."""
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} within {timeout}s; saw {seen}; stderr:\n" + "\n".join(self.stderr[-40:]))
            seen.append(line)
            if line.startswith(prefix):
                return line

    def stop(self, timeout=20):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the bot did not stop on SIGTERM")

    def log(self):
        return "\n".join(self.stderr)


@pytest.fixture
def spawn():
    procs = []

    def start(argv, **kw):
        p = Proc(argv, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


# --- the reference trading bot ------------------------------------------------------
# Its pure logic (``python/examples/trading_bot.py``, ``trading_state.py``) is
# tested without the runtime or the network (test_trading_bot_*.py): the
# modules, and fakes of what the runtime hands a bot.
sys.path.insert(0, str(EXAMPLES))

_stub = None
try:
    import handoff  # noqa: F401
except ImportError:  # the package is not built: the logic needs only App
    _stub = types.ModuleType("handoff")
    _stub.App = type("App", (), {})
    _stub.run = lambda app, feeds, **kw: 0
    sys.modules["handoff"] = _stub

import trading_bot as tb  # noqa: E402, F401
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
