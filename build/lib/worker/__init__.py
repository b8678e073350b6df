"""The inference worker: reads market states from a Redis stream through a
consumer group, runs the SAC actor, publishes one result per state."""
