"""A mirror fed with a market's published messages answers as the market does."""

from __future__ import annotations

from typing import Any

import orjson

from bixweb.feeds.simulated import SimulatedMarket
from bixweb.market import Market
from bixweb.mirror import Mirror, seed_of
from bixweb.model import CHANNELS, TRADES

SYMBOLS = ("BTCUSDT", "ETHUSDT")
STREAMS = [(channel, symbol) for symbol in SYMBOLS for channel in CHANNELS]
START = 1_760_000_000_000


def run(market: Market, sim: SimulatedMarket, ticks: int, t0: int) -> tuple[list[Any], int]:
    """Tick the simulated market; the published (stream, message) pairs and the time after."""
    published = []
    t = t0
    for _ in range(ticks):
        t += 100
        published += [(o.stream, o.message) for o in market.apply(sim.tick(t), t)]
    return published, t


def without_ts(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "ts"}


def test_a_mirror_seeded_mid_stream_then_fed_matches_the_market() -> None:
    sim = SimulatedMarket(SYMBOLS, seed=3)
    market = Market(SYMBOLS, replay_depth=50, epoch=9)
    market.apply(sim.history(START), START)
    _, t = run(market, sim, 30, START)
    mirror = Mirror(SYMBOLS, replay_depth=50)
    mirror.load(seed_of(market, published=30), t)
    published, t = run(market, sim, 700, t)  # across minute boundaries: candles close
    mirror.absorb(published, t)
    assert without_ts(mirror.snapshot(STREAMS, t)) == without_ts(market.snapshot(STREAMS, t))
    for symbol in SYMBOLS:
        assert mirror.states[symbol].ticker() == market.states[symbol].ticker()
        for interval in market.states[symbol].closed:
            assert mirror.states[symbol].candles(interval, 100) == market.states[symbol].candles(interval, 100)
    since_seq = {f"{TRADES}:{s}": market.seq[f"{TRADES}:{s}"] - 5 for s in SYMBOLS}
    from bixweb.protocol import Since

    since = Since(epoch=9, seq=since_seq)
    streams = [(TRADES, s) for s in SYMBOLS]
    assert mirror.replay(since, streams) == market.replay(since, streams)


def test_reloading_within_an_epoch_tells_what_clients_missed_in_order() -> None:
    sim = SimulatedMarket(SYMBOLS, seed=4)
    market = Market(SYMBOLS, epoch=5)
    market.apply(sim.history(START), START)
    _, t = run(market, sim, 10, START)
    mirror = Mirror(SYMBOLS)
    mirror.load(seed_of(market, 10), t)
    before = dict(mirror.seq)
    lost, t = run(market, sim, 40, t)  # published while the link was down: never absorbed
    missed = mirror.load(seed_of(market, 50), t)
    trades = [orjson.loads(data) for stream, data, _ in missed if stream.startswith("trades:")]
    lost_trades = [m for stream, m in lost if stream.startswith("trades:")]
    assert trades and [(m["symbol"], m["seq"]) for m in trades] == [
        (m["symbol"], m["seq"]) for m in lost_trades if m["symbol"] == "BTCUSDT"
    ] + [(m["symbol"], m["seq"]) for m in lost_trades if m["symbol"] == "ETHUSDT"]
    state = {stream for stream, _, _ in missed if not stream.startswith("trades:")}
    assert state == {stream for stream in market.latest if market.seq[stream] > before.get(stream, 0)}
    assert mirror.seq == market.seq
    other_epoch = Market(SYMBOLS, epoch=6)  # the owner restarted
    other_epoch.apply(sim.history(t), t)
    first, t = run(other_epoch, sim, 5, t)
    missed = mirror.load(seed_of(other_epoch, 5), t)
    assert mirror.epoch == 6
    new_trades = [(m["symbol"], m["seq"]) for stream, m in first if stream.startswith("trades:")]
    sent = [(orjson.loads(d)["symbol"], orjson.loads(d)["seq"]) for st, d, _ in missed if st.startswith("trades:")]
    assert new_trades and sorted(sent) == sorted(new_trades)  # clients already connected lose none of them
