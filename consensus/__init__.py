"""Rota's consensus layer: a Raft core with no I/O.

Pure and deterministic: standard library only, no clocks, sockets, threads or
unseeded randomness. The driver (``node/``) or the simulator feeds it ticks and
messages and carries out what ``Raft.ready()`` asks for.
"""
