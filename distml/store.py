"""The artifact store over fsspec: save a version atomically, load it with verification, list versions.

Layout: ``<store>/<name>/<version>/`` with ``model.skops``, ``report.html``
and ``manifest.json``. The manifest is written last, create-only: a version
without one is incomplete and ignored, and an existing version can never be
overwritten. Loading verifies every file against the manifest (and the
manifest's signature when a key is configured) before the model file is read
as anything but bytes; ``distml.trust`` decides what the model file may hold.
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

from distml.errors import JobFailed, StoreError, first_line, io_reason
from distml.remote import open_url
from distml.signing import resolve_key, sign, verify
from distml.trust import check_model_file

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

MANIFEST = "manifest.json"
MODEL = "model.skops"
CLAIM = "claim.json"  # created first, create-only: the version folder is this save's alone
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
VERSION = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")
VALID_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a file inside a version folder, no path
_SECRET_WORDS = re.compile(r"key|secret|token|password|passwd|credential|session", re.IGNORECASE)
_NOT_SECRET = {"row_key"}  # data.row_key names a column: a record without it could not be resumed


def redact(value: Any) -> Any:
    """Replace every value under a secret-looking key by ``***`` (recursively)."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET_WORDS.search(str(k)) and k not in _NOT_SECRET and v not in (None, "")
                else redact(v) for k, v in value.items()}
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
        try:
            return open_url(self.url, self.storage_options)
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot open the store ({type(exc).__name__}: {first_line(exc)})") from None

    def uri(self, *parts: str) -> str:
        return posixpath.join(self.url.rstrip("/"), *parts)

    def check_writable(self) -> None:
        """Fail before training if the store cannot be written (bad URL, missing bucket, credentials)."""
        fs, root = self.filesystem()
        probe = posixpath.join(root, f".distml-probe-{secrets.token_hex(4)}")
        try:
            if _is_object_store(fs):
                _check_bucket(fs, root.split("/", 1)[0], self.url)
            else:
                fs.makedirs(root, exist_ok=True)
            with fs.open(probe, "wb") as f:
                f.write(b"ok")
            fs.rm(probe)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self.url}: the store cannot be written ({io_reason(exc)})") from None

    def save(self, name: str, pipeline: Pipeline, manifest: dict[str, Any],
             extra_files: dict[str, bytes] | None = None, key: bytes | None = None) -> str:
        """Write a new version: claim its folder, write its files, then the manifest with their sha256.

        The claim (``claim.json``) and the manifest are created create-only, so a save can never
        touch another version's files; a save that fails removes what it wrote, or leaves a folder
        without a manifest, which no listing shows. With a signing ``key`` the manifest carries an
        HMAC-SHA256 of its canonical bytes.
        """
        from distml.skops_io import skops_io

        sio = skops_io()

        _check_name(name)
        version = new_version()
        fs, root = self.filesystem()
        prefix = posixpath.join(root, name, version)
        where = self.uri(name, version)
        claim = json.dumps({"job_id": manifest.get("job_id"), "version": version}).encode()
        try:
            if not _is_object_store(fs):
                fs.makedirs(prefix, exist_ok=True)
            _create(fs, posixpath.join(prefix, CLAIM), claim)
        except FileExistsError:
            raise StoreError(f"{where}: version already exists; refusing to overwrite") from None
        except Exception as exc:  # the version id is fresh, so the folder is this save's alone
            _discard(fs, prefix)
            raise JobFailed(f"{where}: cannot write the model ({io_reason(exc)}); nothing was saved") from None
        files = {CLAIM: claim, MODEL: sio.dumps(pipeline), **(extra_files or {})}
        digests = {filename: {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
                   for filename, payload in files.items()}
        document = json.loads(json.dumps({**manifest, "name": name, "version": version, "files": digests},
                                         default=str))  # plain JSON values: what a reader signs
        body = json.dumps(sign(document, key) if key else document, indent=2, sort_keys=True).encode()
        try:
            for filename, payload in files.items():
                if filename != CLAIM:
                    with fs.open(posixpath.join(prefix, filename), "wb") as f:
                        f.write(payload)
            _create(fs, posixpath.join(prefix, MANIFEST), body)
        except Exception as exc:
            _discard(fs, prefix)
            raise JobFailed(f"{where}: cannot write the model ({io_reason(exc)}); nothing was saved") from None
        return where

    def versions(self, name: str) -> list[str]:
        """Complete versions of a model (those with a manifest), oldest first."""
        _check_name(name)
        fs, root = self.filesystem()
        found = fs.glob(posixpath.join(root, name, "*", MANIFEST))
        return sorted(v for v in (posixpath.basename(posixpath.dirname(p)) for p in found) if VERSION.match(v))

    def latest(self, name: str) -> str:
        """The newest complete version of a model."""
        versions = self.versions(name)
        if not versions:
            raise StoreError(f"{self.uri(name)}: no saved versions of model '{name}'")
        return versions[-1]

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
                manifest = json.loads(f.read())
        except FileNotFoundError:
            raise StoreError(f"{self.uri(name, version)}: no such model version (no {MANIFEST})") from None
        except ValueError:
            raise StoreError(f"{self.uri(name, version, MANIFEST)}: not valid JSON") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise StoreError(f"{self.uri(name, version, MANIFEST)}: expected a JSON object with a 'files' "
                             f"mapping; got {type(manifest).__name__}")
        return manifest

    def open_version(self, name: str, version: str, key: bytes | None = None,
                     read: str | None = None) -> tuple[dict[str, Any], str, bytes | None]:
        """The manifest of a version whose every file checks out, its signature status in words,
        and the verified bytes of the file ``read`` (a file the manifest must list).

        Refuses a badly signed (or, with a key, unsigned) manifest, a file in the
        folder that the manifest does not list, and a listed file that is missing
        or whose sha256 differs.
        """
        manifest = self.read_manifest(name, version)
        status = verify(manifest, key, self.uri(name, version, MANIFEST))
        fs, root = self.filesystem()
        prefix = posixpath.join(root, name, version)
        fs.invalidate_cache(prefix)
        present = {posixpath.basename(p.rstrip("/")) for p in fs.ls(prefix, detail=False)} - {MANIFEST}
        unlisted = sorted(present - set(manifest["files"]))
        if unlisted:
            raise StoreError(f"{self.uri(name, version, unlisted[0])}: the file is not listed in the manifest; "
                             "refusing the version")
        if read is not None and read not in manifest["files"]:
            raise StoreError(f"{self.uri(name, version)}: the manifest lists no {read}")
        payload = None
        for filename in manifest["files"]:
            verified = self.read_verified(name, version, filename, manifest)
            payload = verified if filename == read else payload
        return manifest, status, payload

    def read_verified(self, name: str, version: str, filename: str, manifest: dict[str, Any]) -> bytes:
        """Read one file of a version and check it against the manifest's sha256."""
        fs, root = self.filesystem()
        entry = manifest["files"].get(filename)
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if expected is None or not VALID_FILENAME.match(filename):
            raise StoreError(f"{self.uri(name, version)}: the manifest lists no {filename} with a sha256")
        try:
            with fs.open(posixpath.join(root, name, version, filename), "rb") as f:
                payload = f.read()
        except FileNotFoundError:
            raise StoreError(f"{self.uri(name, version, filename)}: listed in the manifest but missing") from None
        if hashlib.sha256(payload).hexdigest() != expected:
            raise StoreError(f"{self.uri(name, version, filename)}: sha256 does not match the manifest; "
                             "the file was changed or corrupted")
        return payload


def _is_object_store(fs: Any) -> bool:
    """An object store (S3 and the like) has buckets and no folders to make."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return not {"file", "local", "memory"} & set(protocols)


def _check_bucket(fs: Any, bucket: str, url: str) -> None:
    """Refuse a bucket that does not exist: makedirs or a write would create it, and a typo must not.

    ``head_bucket`` rather than ``exists``, which answers False for a store that does not answer.
    """
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise StoreError(f"{url}: the store cannot be written (bucket '{bucket}' does not exist; "
                         "distml does not create buckets)") from None


def _create(fs: Any, path: str, payload: bytes) -> None:
    """Write a file create-only; ``FileExistsError`` if it exists (S3: a conditional put)."""
    try:
        with fs.open(path, "xb") as f:
            f.write(payload)
    except OSError as exc:
        if "pre-condition" in str(exc) or "PreconditionFailed" in str(exc):  # S3's create-only refusal
            raise FileExistsError(path) from None
        raise


def _discard(fs: Any, prefix: str) -> None:
    """Remove a failed save's files; if that fails too, the folder has no manifest and stays unlisted."""
    try:
        fs.rm(prefix, recursive=True)
    except Exception:
        pass


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


def open_model(uri: str, storage_options: dict[str, Any] | None = None, *,
               signing_key: str | bytes | None = None,
               signing_key_file: str | None = None) -> tuple[Pipeline, dict[str, Any], str]:
    """``load_model``'s work, also returning the version's manifest and its full URI."""
    from distml.skops_io import skops_io

    sio = skops_io()

    key = resolve_key(signing_key, signing_key_file)
    store, name, version = split_uri(uri, storage_options)
    _check_name(name)
    version = version or store.latest(name)
    manifest, _, payload = store.open_version(name, version, key, read=MODEL)
    where = store.uri(name, version, MODEL)
    trusted = check_model_file(payload, where)
    try:
        return sio.loads(payload, trusted=trusted), manifest, store.uri(name, version)
    except Exception as exc:
        raise StoreError(f"{where}: cannot load the model ({type(exc).__name__}: {first_line(exc)})") from None


def load_model(uri: str, storage_options: dict[str, Any] | None = None, *,
               signing_key: str | bytes | None = None, signing_key_file: str | None = None) -> Pipeline:
    """Load a saved Pipeline after verifying every file of its version; never runs code the files carry.

    Parameters
    ----------
    uri : str
        ``<store>/<name>/<version>``, or ``<store>/<name>`` for the newest version.
    storage_options : dict, optional
        Passed to fsspec (``endpoint_url``, ``key``, ``secret``…).
    signing_key, signing_key_file : optional
        The manifest signing key, or a file holding it; default ``$DISTML_SIGNING_KEY``.
        With a key, an unsigned or badly signed manifest is refused.

    Returns
    -------
    sklearn.pipeline.Pipeline
        The fitted feature transformer and estimator, built only from the exact
        types listed in ``distml.trust``.
    """
    return open_model(uri, storage_options, signing_key=signing_key, signing_key_file=signing_key_file)[0]
