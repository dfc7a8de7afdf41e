"""Compatibility names: logs and request ids moved to ``registry.logs``, the Prometheus
collectors to ``registry.prometheus`` and the request observer middleware to
``registry.web.observer``. Import from there; this module only keeps older imports working."""

from __future__ import annotations

from registry.logs import JsonFormatter, configure_logging, request_id_var
from registry.prometheus import FleetCollector, Metrics
from registry.web.observer import RequestObserver

__all__ = ["FleetCollector", "JsonFormatter", "Metrics", "RequestObserver",
           "configure_logging", "request_id_var"]
