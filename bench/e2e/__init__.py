"""End-to-end latency and throughput through real Redis: producer processes
XADD states (open loop at a fixed rate, or as fast as possible for a count),
N worker processes answer, a collector reads every result. Every figure is
also given as a ratio to the Redis floor measured in the same run.

    python -m bench e2e                      # the default scenarios
    python -m bench e2e --workers 2 --count 100000
    python -m bench e2e --rate 5000 --duration 10 --backend eager
    python -m bench e2e --cluster 3          # a Redis Cluster beside one Redis
"""
