"""The fleet agent: one process per serving replica keeps it in step with its pool.

Client side only (``registry.client``, ``registry.serving``, the fingerprint code): it could run
on a GPU host that reaches nothing but the API and the blob store. :class:`Agent` is the
reconcile loop; :mod:`registry.agent.engine` the engine driver it talks to.
"""

from registry.agent.loop import Agent, AgentOptions, Stopped, default_replica_id

__all__ = ["Agent", "AgentOptions", "Stopped", "default_replica_id"]
