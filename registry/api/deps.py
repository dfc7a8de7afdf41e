"""Compatibility names: the request context moved to ``registry.web.context`` (shared with the
UI) and ``etag_matches`` to ``registry.api.etags``. Import from there; this module only keeps
older imports working."""

from __future__ import annotations

from registry.api.etags import etag_matches
from registry.web.context import (
    BEARER,
    LOCAL_PRINCIPAL,
    Bearer,
    Ctx,
    CtxDep,
    State,
    get_ctx,
    get_state,
)
from registry.web.token_cache import TokenCache

__all__ = ["BEARER", "LOCAL_PRINCIPAL", "Bearer", "Ctx", "CtxDep", "State", "TokenCache",
           "etag_matches", "get_ctx", "get_state"]
