"""The package over the Rust runtime, in real processes against the
exchange simulator: a bot alone (no supervisor), its effects, its errors,
and the packed zipapp. (Under the supervisor: tests/e2e/python.rs.)"""

import hashlib
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import EXAMPLES, REPO

BOTS = REPO / "python" / "tests" / "bots"


def wait_sent(sim, connections, sent, timeout=30):
    """Until the simulator has seen `connections` connections and sent
    `sent` trades (the whole finite feed) over them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        audit = sim.get("/audit")
        if audit["connections_total"] >= connections and audit["totals"]["sent"] >= sent:
            return
        time.sleep(0.02)
    pytest.fail(f"the feed did not reach {sent} trades: {audit}")


def assert_all_acked(sim, sent, connections=1):
    """The whole finite feed (`sent` trades) was acked, each once, in order."""
    wait_sent(sim, connections, sent)
    audit = sim.audit_when_acked()
    t = audit["totals"]
    assert t["sent"] > 0, audit
    for k in ("gaps", "duplicates", "reordered", "unknown_acks", "malformed", "unacked"):
        assert t[k] == 0, f"{k}: {audit}"
    assert t["acked"] == t["sent"], audit
    assert audit["connections_total"] == connections, audit
    return audit


@pytest.mark.sim_args("--trades", "300", "--rate", "1000", "--symbols", "btcusdt", "--fragment-every", "5", "--ping-every", "7")
def test_a_bot_alone_acks_every_trade_and_gets_its_effects_back(sim, spawn):
    bot = spawn([sys.executable, str(BOTS / "probe_bot.py"), sim.ws_url])
    refused = {bot.expect("refused").split()[1] for _ in range(3)}
    assert refused == {"TypeError", "ValueError"}
    results = {bot.expect("done") for _ in range(2)}
    assert "done 42" in results, results
    assert any(r.startswith("done-exception ValueError no such order") for r in results), results
    assert bot.expect("stale-outbox").startswith("stale-outbox this outbox belongs to a callback that has returned")
    assert bot.expect("timer") == "timer tick False"
    assert_all_acked(sim, 300)
    assert bot.stop() == 0, bot.log()


@pytest.mark.sim_args("--trades", "200", "--rate", "1000", "--symbols", "btcusdt")
def test_an_exception_in_a_callback_is_logged_and_the_bot_carries_on(sim, spawn):
    bot = spawn([sys.executable, str(BOTS / "probe_bot.py"), sim.ws_url, "10"])
    assert_all_acked(sim, 200)
    assert bot.proc.poll() is None, "the runtime died of a Python exception"
    assert bot.stop() == 0
    log = bot.log()
    assert "Traceback (most recent call last)" in log and "KeyError: 'provoked at trade 10'" in log, log
    assert "on_message" in log


@pytest.mark.sim_args("--trades", "200", "--rate", "1000", "--symbols", "btcusdt")
def test_a_connection_opened_to_a_url_never_reachable_is_refused_and_the_bot_told(sim, spawn):
    bot = spawn([sys.executable, str(BOTS / "probe_bot.py"), sim.ws_url, "0", "http://127.0.0.1:9/"])
    assert bot.expect("closed") == "closed extra refused http://127.0.0.1:9/"
    assert_all_acked(sim, 200)
    assert bot.stop() == 0, bot.log()
    assert "only ws:// and wss:// URLs are supported" in bot.log()
    assert "will retry" not in bot.log()


@pytest.mark.sim_args("--trades", "400", "--rate", "1000", "--symbols", "btcusdt,ethusdt")
def test_the_reference_bot_runs_alone_on_the_simulator(sim, spawn):
    bot = spawn([sys.executable, str(EXAMPLES / "trading_bot.py"), "--feed", sim.ws_url, "--symbols", "btcusdt,ethusdt", "--ack"])
    assert_all_acked(sim, 800)
    assert bot.stop() == 0, bot.log()


def test_a_packed_bot_is_reproducible_and_runs_its_own_native_module(tmp_path, sim, spawn):
    out1, out2 = tmp_path / "a.pyz", tmp_path / "b.pyz"
    for out in (out1, out2):
        done = subprocess.run(
            [sys.executable, "-m", "handoff.pack", str(BOTS / "probe_bot.py"), "-o", str(out)],
            capture_output=True, text=True, check=True,
        )
        digest, name = done.stdout.split()
        assert digest == hashlib.sha256(out.read_bytes()).hexdigest() and name == str(out)
    assert out1.read_bytes() == out2.read_bytes(), "the same inputs gave different archives"
    assert out1.read_bytes().startswith(b"#!" + sys.executable.encode() + b"\n")
    names = zipfile.ZipFile(out1).namelist()
    assert "__main__.py" in names and "probe_bot.py" in names and "handoff/__init__.py" in names
    assert any(n.startswith("handoff/_native") for n in names), names
    # Run from an unrelated directory: nothing is imported from beside it.
    bot = spawn([str(out1), sim.ws_url], cwd=str(tmp_path))
    assert bot.expect("native").startswith("native /proc/self/fd/"), "the native module came from the environment"
    assert bot.expect("done")


def test_pack_refuses_bad_inputs_with_a_clear_message(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "handoff.pack", str(tmp_path / "missing.py"), "-o", str(tmp_path / "x.pyz")],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "the bot's entry is a .py file" in bad.stderr, bad.stderr
    (tmp_path / "bot.py").write_text("print('hi')\n")
    bad = subprocess.run(
        [sys.executable, "-m", "handoff.pack", str(tmp_path / "bot.py"), "--add", str(tmp_path / "nope"), "-o", str(tmp_path / "x.pyz")],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr, bad.stderr


def test_a_bad_app_is_refused_before_anything_runs():
    import handoff

    class NoName(handoff.App):
        NAME = 7

    with pytest.raises(TypeError, match="NAME must be a str"):
        handoff.run(NoName(), ["ws://127.0.0.1:9/ws"])

    class BadSchemas(handoff.App):
        READS_SCHEMAS = ["one"]

    with pytest.raises(TypeError, match="READS_SCHEMAS must be a list of schema numbers"):
        handoff.run(BadSchemas(), ["ws://127.0.0.1:9/ws"])
    with pytest.raises(ValueError, match="kernel_tls"):
        handoff.run(handoff.App(), ["ws://127.0.0.1:9/ws"], kernel_tls="sometimes")


def test_the_effect_loop_returns_results_and_exceptions():
    import asyncio
    import threading
    from handoff._effects import EffectLoop

    loop = EffectLoop()
    got, ready = [], threading.Event()

    async def ok():
        return "ok"

    async def bad():
        raise RuntimeError("bad")

    def done(r):
        got.append(r)
        if len(got) == 2:
            ready.set()

    loop.submit(ok(), done)
    loop.submit(bad(), done)
    assert ready.wait(10)
    assert "ok" in got and any(isinstance(r, RuntimeError) for r in got)
    hang = loop.submit(asyncio.sleep(3600), lambda r: got.append(r))
    loop.close()
    assert hang.cancelled()


def test_the_readme_example_is_this_file_and_runs(sim, spawn):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python bots"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    block = block[: block.index("```")]
    example = EXAMPLES / "minimal_bot.py"
    assert block == example.read_text(), "README's Python example and python/examples/minimal_bot.py differ"
    bot = spawn([sys.executable, str(example), sim.ws_url])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        audit = sim.get("/audit")
        if audit["connections_total"] == 1 and audit["totals"]["sent"] > 100:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the example never got trades: {audit}")
    assert bot.stop() == 0, bot.log()
    assert "Traceback" not in bot.log(), bot.log()
