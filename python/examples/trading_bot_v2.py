#!/usr/bin/env python3
"""The reference trading bot's next build: schema 2 (see trading_bot.py)."""
import sys

import trading_bot

if __name__ == "__main__":
    sys.exit(trading_bot.main(schema=2))
