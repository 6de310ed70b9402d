"""Optional signed manifests: an HMAC-SHA256 over the manifest's canonical bytes.

The manifest lists every file's sha256, so its signature covers the whole
version. Checksums alone stop corruption, not a writer of the store, who can
rewrite the manifest too; a signature stops anyone without the key.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from distml.errors import SpecError, StoreError

KEY_ENV = "DISTML_SIGNING_KEY"
ALGORITHM = "hmac-sha256"


def resolve_key(key: str | bytes | None = None, key_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The key in force: ``key``, else the file ``key_file``, else ``$DISTML_SIGNING_KEY``; ``None`` if none."""
    if key is None and key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise SpecError(f"{key_file}: cannot read the signing key file ({exc.strerror})") from None
        if not key:
            raise SpecError(f"{key_file}: the signing key file is empty")
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is None:
        return None
    return key.encode() if isinstance(key, str) else bytes(key)


def fingerprint(key: bytes) -> str:
    """A short public name of a key: tells two keys apart without revealing either."""
    return hmac.new(key, b"distml signing key fingerprint", hashlib.sha256).hexdigest()[:16]


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without its signature, sorted keys, no spaces."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(manifest: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The manifest with a ``signature`` entry added."""
    value = hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()
    return {**manifest, "signature": {"algorithm": ALGORITHM, "value": value}}


def verify(manifest: dict[str, Any], key: bytes | None, where: str) -> str:
    """Check the signature when a key is configured; return what was found, in words.

    Raises ``StoreError`` when a key is configured and the manifest is unsigned or badly signed.
    """
    signature = manifest.get("signature")
    if key is None:
        return "signed (not verified: no signing key configured)" if signature else "unsigned"
    if not isinstance(signature, dict) or "value" not in signature:
        raise StoreError(f"{where}: the manifest is unsigned and a signing key is configured; refusing it")
    if signature.get("algorithm") != ALGORITHM:
        raise StoreError(f"{where}: the manifest's signature algorithm is {signature.get('algorithm')!r}, "
                         f"expected {ALGORITHM!r}; refusing it")
    expected = hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signature["value"])):
        raise StoreError(f"{where}: the manifest's signature does not match the configured key "
                         "(signed with another key, or changed after signing); refusing it")
    return "signature verified"
