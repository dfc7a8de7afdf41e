"""Client-side serving handoff: what an inference engine needs from the registry.

* :mod:`registry.serving.export` -- a pool's desired set as the folder layout vLLM's
  filesystem resolver reads (one immutable folder per served name), drained, never pruned
  early, and optionally the engine's loaded adapters made to match (runtime API).
* :mod:`registry.serving.channel_export` -- the older namespace + channel export (a symlink per
  adapter name), for loaders that want one stable name per adapter.
* :mod:`registry.serving.drain` -- when a name that left may go: the drain rule and its state.
* :mod:`registry.serving.vllm` -- a small driver for vLLM's runtime LoRA API.

These modules talk to the registry only through :class:`registry.client.Client` (HTTP) and to
engines over HTTP, never to the database or the services: they run on serving hosts that
reach nothing but the API, the blob store and their engine.
"""
