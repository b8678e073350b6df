"""Serving equals training, on the same prices: the held-out rows of a price file
streamed through a live worker over Redis exactly as a strategy streams them
(``PriceClient``: streaming features, the client, positions from the returned
actions), beside the offline walk forward of the same model on the same rows.
Exits 1 when an action differs by more than 1e-6 or a score by more than those
differences allow (its bound is printed beside it).

    python -m bench replay prices.csv --model models/policy.pt
    python -m bench replay prices.csv --model champion.pt --challenger candidate.pt --json replay.json
"""
