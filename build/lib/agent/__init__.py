"""The policy core (actor, checkpoint format, compile helper) and, in submodules
imported only on demand, the training wing.

Kept light on purpose: importing ``agent`` or ``agent.actor`` must not pull in the
environment, the SAC trainer or the tracker (the worker imports only the core).
"""
