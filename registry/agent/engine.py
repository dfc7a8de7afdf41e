"""The engine drivers the agent uses: vLLM's runtime LoRA API (:class:`VllmEngine`), or none
(vLLM's filesystem resolver reads the cache folder by itself).

:class:`VllmEngine` is :class:`registry.serving.vllm.VllmRuntime` (what ``export --pool`` drives)
plus what only the agent asks: which base model the engine serves, so a restarted engine with
other weights is re-checked.
"""

from __future__ import annotations

from registry.errors import EngineUnavailable
from registry.serving.vllm import VllmRuntime, engine_message


class VllmEngine(VllmRuntime):
    """One vLLM server (runtime LoRA updating on)."""

    def base_root(self) -> str:
        """``id@root`` of the base model ``/v1/models`` lists (the entry without a parent):
        it changes when the engine is restarted on another model."""
        response = self._call("GET", "/v1/models")
        if response.status_code != 200:
            raise EngineUnavailable(f"{self.url}/v1/models answered {response.status_code}: "
                                    f"{engine_message(response)}", engine=self.url)
        try:
            bases = [e for e in response.json()["data"] if not e.get("parent")]
            return ",".join(f"{e['id']}@{e.get('root') or ''}" for e in bases)
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineUnavailable(f"{self.url}/v1/models is not a vLLM model list: {exc!r}",
                                    engine=self.url) from None
