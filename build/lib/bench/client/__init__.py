"""The strategy-side client's round trip through one worker and a real Redis, in
one run and interleaved in rounds: a raw redis-py XADD + XREAD BLOCK loop (the
baseline), ``ActionClient.act``, ``act_many(n)`` and the price-level
``PriceClient.tick``, with the ratios issue 13 sets targets for.

    python -m bench client
    python -m bench client --count 5000 --many 4,16,64 --json client.json
"""
