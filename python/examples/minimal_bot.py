#!/opt/bot/venv/bin/python
import json, sys
import handoff

class Bot(handoff.App):
    NAME, SCHEMA = "my-bot", 1

    def __init__(self):
        self.trades = {}                       # the state: survives every deploy

    def snapshot(self):                        # bytes, whenever the runtime asks
        return json.dumps(self.trades).encode()

    def restore(self, schema, data, mode):     # raise here and the old bot keeps serving
        self.trades = json.loads(data)

    def on_open(self, conn, out):              # fresh connections only, not handed-over ones
        out.send(conn, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
        out.after(60, "report")                # timers are handed over too

    def on_message(self, conn, msg, out):      # one message, between two freezes
        t = json.loads(msg).get("data", {})
        if t.get("e") == "trade":
            self.trades[t["s"]] = self.trades.get(t["s"], 0) + 1

    def on_timer(self, timer, out):
        out.after(60, "report")

    def summary(self):                         # supervisorctl status --json
        return {"trades": self.trades}

sys.exit(handoff.run(Bot(), sys.argv[1:]))   # feeds: URL or NAME=URL
