"""A small driver for vLLM's runtime LoRA API (a server started with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``).

* ``GET /v1/models`` lists the base model and every loaded adapter (``id`` = its name,
  ``root`` = the path it was loaded from, ``parent`` = the base's served name).
* ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``: 200 with a text body on success.
  vLLM answers a refusal of the adapter itself (rank above ``--max-lora-rank``, DoRA, a module
  the model lacks) with **500** and the reason in ``error.message``, a missing folder with 404,
  a name already loaded with 400 (measured on vLLM 0.32, see tests/serving/).
* ``POST /v1/unload_lora_adapter {"lora_name"}``: 200, or 404 when the name is not loaded.
  Unloading only forgets the name: a request for it no longer reloads its folder, so the
  folder can then be deleted safely (vLLM reloads an evicted adapter from its folder and
  stops the whole server if the folder is gone).

Every refusal is :class:`registry.errors.EngineRefused` carrying the engine's own text (exit 4);
an engine that cannot be reached or answers something else than vLLM would is
:class:`registry.errors.EngineUnavailable` (exit 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from registry.errors import EngineRefused, EngineUnavailable

LOAD_TIMEOUT = 300.0  # loading an adapter reads its weights; a large one on a busy host is slow


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter the engine lists: its name and the folder it was loaded from."""

    name: str
    path: str
    parent: str | None


class VllmRuntime:
    """One vLLM server's runtime LoRA API (``url`` like ``http://gpu-1:8000``)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = LOAD_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> VllmRuntime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def adapters(self) -> dict[str, LoadedAdapter]:
        """Every loaded adapter by name (the base model is not one: it has no ``parent``)."""
        response = self._call("GET", "/v1/models")
        if response.status_code != 200:
            raise EngineUnavailable(f"{self.url}/v1/models answered {response.status_code}: "
                                    f"{engine_message(response)}", engine=self.url)
        try:
            data = response.json()["data"]
            return {e["id"]: LoadedAdapter(e["id"], str(e.get("root") or ""), e.get("parent"))
                    for e in data if e.get("parent")}
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineUnavailable(f"{self.url}/v1/models is not a vLLM model list: {exc!r}",
                                    engine=self.url) from None

    def load(self, name: str, path: str) -> None:
        """Load the adapter folder ``path`` under ``name``; EngineRefused with vLLM's reason."""
        response = self._call("POST", "/v1/load_lora_adapter",
                              {"lora_name": name, "lora_path": path})
        if response.status_code != 200:
            raise EngineRefused(f"{self.url} refused to load {name} from {path} "
                                f"(HTTP {response.status_code}): {engine_message(response)}",
                                engine=self.url, served_name=name,
                                engine_status=response.status_code,
                                engine_message=engine_message(response))

    def unload(self, name: str) -> bool:
        """Forget ``name``; False if it was not loaded."""
        response = self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise EngineRefused(f"{self.url} refused to unload {name} "
                                f"(HTTP {response.status_code}): {engine_message(response)}",
                                engine=self.url, served_name=name,
                                engine_status=response.status_code,
                                engine_message=engine_message(response))
        return True

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"cannot reach the engine at {self.url}: {exc!r}",
                                    engine=self.url) from None


def engine_message(response: httpx.Response) -> str:
    """vLLM's error text: ``error.message`` of its JSON error (older releases: ``message``),
    else the body as it came, shortened."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:2000] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return str(body)[:2000]
