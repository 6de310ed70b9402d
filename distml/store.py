"""The artifact store over fsspec: save a version atomically, load it with verification, list versions.

Layout: ``<store>/<name>/<version>/`` with ``model.skops``, ``report.html``
and ``manifest.json``. The manifest is written last, create-only: a version
without one is incomplete and ignored, and an existing version can never be
overwritten.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from distml.errors import StoreError, first_line

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

MANIFEST = "manifest.json"
MODEL = "model.skops"
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
VERSION = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")
TRUSTED_PREFIXES = ("sklearn.", "numpy.")
_SECRET_WORDS = re.compile(r"key|secret|token|password|passwd|credential|session", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Replace every value under a secret-looking key by ``***`` (recursively)."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET_WORDS.search(str(k)) and v not in (None, "") else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def new_version() -> str:
    """A version id that sorts by creation time and is unique: ``20261124T053236123456Z-1a2b3c``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class Store:
    """An fsspec location holding model versions."""

    url: str
    storage_options: dict[str, Any]

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the store's root path in it."""
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url, **self.storage_options)
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot open the store ({type(exc).__name__}: {first_line(exc)})") from None

    def uri(self, *parts: str) -> str:
        return posixpath.join(self.url.rstrip("/"), *parts)

    def check_writable(self) -> None:
        """Fail before training if the store cannot be written (bad URL, bucket, credentials)."""
        fs, root = self.filesystem()
        probe = posixpath.join(root, f".distml-probe-{secrets.token_hex(4)}")
        try:
            fs.makedirs(root, exist_ok=True)
            with fs.open(probe, "wb") as f:
                f.write(b"ok")
            fs.rm(probe)
        except Exception as exc:
            raise StoreError(f"{self.url}: the store cannot be written ({type(exc).__name__}: "
                             f"{first_line(exc)})") from None

    def save(self, name: str, pipeline: Pipeline, manifest: dict[str, Any],
             extra_files: dict[str, bytes] | None = None) -> str:
        """Write a new version: files first, then the manifest (create-only) with their sha256."""
        import skops.io as sio

        _check_name(name)
        version = new_version()
        fs, root = self.filesystem()
        prefix = posixpath.join(root, name, version)
        files = {MODEL: sio.dumps(pipeline), **(extra_files or {})}
        digests = {}
        try:
            fs.makedirs(prefix, exist_ok=True)
            for filename, payload in files.items():
                with fs.open(posixpath.join(prefix, filename), "wb") as f:
                    f.write(payload)
                digests[filename] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
            body = json.dumps({**manifest, "name": name, "version": version, "files": digests},
                              indent=2, sort_keys=True, default=str).encode()
            with fs.open(posixpath.join(prefix, MANIFEST), "xb") as f:
                f.write(body)
        except FileExistsError:
            raise StoreError(f"{self.uri(name, version)}: version already exists; refusing to overwrite") from None
        except OSError as exc:
            if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):  # S3's create-only refusal
                raise StoreError(f"{self.uri(name, version)}: version already exists; refusing to overwrite") from None
            raise StoreError(f"{self.uri(name, version)}: cannot write the model "
                             f"({type(exc).__name__}: {first_line(exc)})") from None
        except Exception as exc:
            raise StoreError(f"{self.uri(name, version)}: cannot write the model "
                             f"({type(exc).__name__}: {first_line(exc)})") from None
        return self.uri(name, version)

    def versions(self, name: str) -> list[str]:
        """Complete versions of a model (those with a manifest), oldest first."""
        _check_name(name)
        fs, root = self.filesystem()
        found = fs.glob(posixpath.join(root, name, "*", MANIFEST))
        return sorted(v for v in (posixpath.basename(posixpath.dirname(p)) for p in found) if VERSION.match(v))

    def models(self) -> list[str]:
        """Names of the models in the store."""
        fs, root = self.filesystem()
        try:
            found = fs.glob(posixpath.join(root, "*", "*", MANIFEST))
        except FileNotFoundError:
            return []
        return sorted({posixpath.basename(posixpath.dirname(posixpath.dirname(p))) for p in found})

    def read_manifest(self, name: str, version: str) -> dict[str, Any]:
        fs, root = self.filesystem()
        path = posixpath.join(root, name, version, MANIFEST)
        try:
            with fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            raise StoreError(f"{self.uri(name, version)}: no such model version (no {MANIFEST})") from None
        except ValueError:
            raise StoreError(f"{self.uri(name, version)}/{MANIFEST}: not valid JSON") from None

    def read_verified(self, name: str, version: str, filename: str, manifest: dict[str, Any]) -> bytes:
        """Read one file of a version and check it against the manifest's sha256."""
        fs, root = self.filesystem()
        expected = manifest.get("files", {}).get(filename, {}).get("sha256")
        if expected is None:
            raise StoreError(f"{self.uri(name, version)}: the manifest lists no {filename}")
        with fs.open(posixpath.join(root, name, version, filename), "rb") as f:
            payload = f.read()
        if hashlib.sha256(payload).hexdigest() != expected:
            raise StoreError(f"{self.uri(name, version, filename)}: sha256 does not match the manifest; "
                             "the file was changed or corrupted")
        return payload


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise StoreError(f"model name {name!r} is not valid; expected lowercase letters, digits and dashes")


def split_uri(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[Store, str, str | None]:
    """``<store>/<name>[/<version>]`` -> (store, name, version or None for the latest)."""
    trimmed = uri.rstrip("/")
    head, last = posixpath.split(trimmed)
    if VERSION.match(last):
        store_url, name = posixpath.split(head)
        return Store(store_url, storage_options or {}), name, last
    return Store(head, storage_options or {}), last, None


def load_model(uri: str, storage_options: dict[str, Any] | None = None) -> Pipeline:
    """Load a saved Pipeline after checking its sha256 against the manifest.

    Parameters
    ----------
    uri : str
        ``<store>/<name>/<version>``, or ``<store>/<name>`` for the newest version.
    storage_options : dict, optional
        Passed to fsspec (``endpoint_url``, ``key``, ``secret``…).

    Returns
    -------
    sklearn.pipeline.Pipeline
        The fitted feature transformer and estimator; only scikit-learn and numpy
        types are trusted when it is deserialised.
    """
    import skops.io as sio

    store, name, version = split_uri(uri, storage_options)
    _check_name(name)
    if version is None:
        versions = store.versions(name)
        if not versions:
            raise StoreError(f"{uri}: no saved versions of model '{name}'")
        version = versions[-1]
    manifest = store.read_manifest(name, version)
    payload = store.read_verified(name, version, MODEL, manifest)
    untrusted = sio.get_untrusted_types(data=payload)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise StoreError(f"{store.uri(name, version, MODEL)}: refusing to load untrusted types {', '.join(refused)}")
    return sio.loads(payload, trusted=untrusted)
