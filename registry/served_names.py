"""Served names: the name a router sends an inference engine for one version's content.

``<namespace>~<adapter>~<number>~<digest12>``, e.g. ``acme~bot~7~3f2a9c1b0d4e``, where
``digest12`` is the first 12 hex digits of the version's manifest digest.

* **Never two digests.** Namespace and adapter names cannot contain ``~`` (:mod:`registry.refs`),
  so a served name splits back into exactly one namespace, adapter and version number
  (:func:`parse_served_name`), and a version's content is immutable: one name, one manifest.
  The digest part also keeps a name from meaning other bytes if an adapter were ever created
  anew under an old name.
* **Never reused.** A new version has a new number, so a router never reloads other content
  under a name an engine has cached (vLLM keys its prefix cache by adapter name: reloading
  new weights under an old name serves stale cache blocks, vllm-project/vllm#42125).
* **Valid everywhere it is used.** ``~`` is unreserved in URLs (RFC 3986) and allowed in file
  names on every common file system, so the name is the vLLM model name (``lora_name``) and
  the export folder name as it is, without escaping. At most 64 + 128 + 10 + 12 + 3 = 217
  characters: under the 255-byte file-name limit.
"""

from __future__ import annotations

import re

from registry.errors import BadRequest
from registry.refs import ADAPTER_RE, MAX_VERSION, NAMESPACE_RE

SEPARATOR = "~"
DIGEST_CHARS = 12
_DIGEST_RE = re.compile(r"^[0-9a-f]{12}\Z")


def served_name(namespace: str, adapter: str, number: int, manifest_digest: str) -> str:
    """The served name of version ``number`` of ``namespace/adapter`` with this manifest."""
    return SEPARATOR.join((namespace, adapter, str(number), manifest_digest[:DIGEST_CHARS]))


def parse_served_name(name: str) -> tuple[str, str, int, str]:
    """``(namespace, adapter, number, digest12)`` of a served name; BadRequest otherwise."""
    parts = name.split(SEPARATOR)
    if len(parts) != 4:
        raise BadRequest(f"{name!r} is not a served name (ns~adapter~number~digest12)")
    namespace, adapter, number, digest = parts
    valid = (NAMESPACE_RE.match(namespace) and ADAPTER_RE.match(adapter)
             and number.isdigit() and not number.startswith("0")
             and 1 <= int(number) <= MAX_VERSION and _DIGEST_RE.match(digest))
    if not valid:
        raise BadRequest(f"{name!r} is not a served name (ns~adapter~number~digest12)")
    return namespace, adapter, int(number), digest
