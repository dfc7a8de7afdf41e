"""What the API and the web UI share per process and per request (the web context room).

``registry.api`` and ``registry.ui`` both import from here and never from each other (only
``registry.api.app``, the assembler, mounts the UI). Nothing here imports either of them.

* :mod:`registry.web.context`: the app's :class:`~registry.web.context.State`, the request's
  :class:`~registry.web.context.Ctx`, and :func:`~registry.web.context.authorize`, the one
  place that decides who a request is (used by ``get_ctx`` and by the resolve fast path);
* :mod:`registry.web.token_cache`: authenticated tokens kept for a few seconds;
* :mod:`registry.web.caches`: the resolve answers and presigned URLs a process keeps;
* :mod:`registry.web.observer`: the ASGI middleware for request ids and request metrics.
"""
