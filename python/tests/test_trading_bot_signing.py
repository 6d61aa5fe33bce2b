"""The reference Python trading bot's request signing as Binance documents it
(the same examples as worker/trading/src/signing.rs), the API keys' loading
and refusals, and ``main``'s flags. No runtime, no network.
"""

import asyncio
import time

import pytest

from conftest import D, tb, ts


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
