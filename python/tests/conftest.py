"""Fixtures: the exchange simulator and bots as real processes.

The simulator is the `exchange-sim` binary of this repository's build
(`$HANDOFF_BIN_DIR`, default `target/debug`: `cargo build` or `cargo test`
makes it). Bots run under the interpreter running pytest, as a bot would.
"""

import json
import os
import subprocess
import threading
import queue
import urllib.request
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
