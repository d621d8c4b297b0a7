"""Object storage for attachments (decisions 0037, 0046): the interface the service uses, the store the
settings pick (:func:`open_store`: the embedded one, or S3 in `s3.py`), and the embedded store, which
keeps files under the data folder and serves signed, expiring upload and download URLs through the gateway
(`/attachment/blobs/<key>?expires=…&signature=…`).

A signature is an HMAC-SHA256, under the store's secret, of the method, the object's key and the
expiry time: a URL cannot be turned into another object's, another method's or a later expiry's. What a
file may be (type, length) is checked against its upload record by the service, not trusted from the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from services.transactions.config import TransactionsSettings
from shared.errors import BankError, bad_request, forbidden
from shared.ids import new_id

MAX_BYTES = 10 * 1024 * 1024  # 10 MB
ALLOWED_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif", "application/pdf"}
)
BLOBS = "/attachment/blobs/"
FILES = "/attachment/files/"
_KEY = re.compile(r"^file_[0-9A-Z]{26}/[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_key(file_name: str) -> str:
    """A fresh object key that keeps a readable, path-safe form of the file's name."""
    safe = _UNSAFE.sub("_", file_name).lstrip(".")[:100] or "file"
    return f"{new_id('file')}/{safe}"


def valid_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def check_type(file_type: str) -> str:
    kind = file_type.strip().lower()
    if kind not in ALLOWED_TYPES:
        raise bad_request(
            "bad_param.file_type",
            f"file_type is one of {', '.join(sorted(ALLOWED_TYPES))}",
            param="file_type",
        )
    return kind


class ObjectStore(Protocol):
    def upload_url(self, key: str, file_type: str, content_length: int) -> str:
        """Where the client PUTs the bytes (with that Content-Type), until the URL expires."""
        ...

    def download_url(self, key: str) -> str:
        """Where the bytes can be read, until the URL expires."""
        ...

    async def size(self, key: str) -> int | None:
        """The stored object's size in bytes, or None if nothing is stored under the key."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds open (connections); called when the service stops."""
        ...


def open_store(settings: TransactionsSettings, data_dir: str, public_url: str) -> ObjectStore:
    """The store `TRANSACTIONS_STORAGE` names: `local` (files under the data folder, URLs on the gateway
    at `public_url`) or `s3` (presigned URLs on the bucket)."""
    if settings.storage == "s3":
        from services.transactions.s3 import S3Store

        assert settings.storage_s3_endpoint and settings.storage_s3_bucket  # checked by the settings
        assert settings.storage_s3_access_key and settings.storage_s3_secret_key
        return S3Store(
            settings.storage_s3_endpoint,
            settings.storage_s3_bucket,
            settings.storage_s3_region,
            settings.storage_s3_access_key,
            settings.storage_s3_secret_key,
            settings.storage_url_seconds,
        )
    folder = Path(settings.storage_folder or Path(data_dir) / "attachments")
    return LocalStore(folder, public_url, settings.storage_secret, settings.storage_url_seconds)


class LocalStore:
    """Files under a folder; URLs on the gateway, signed with the store's secret."""

    def __init__(self, folder: Path, public_url: str, secret: str, url_seconds: float) -> None:
        self.folder = folder
        self.public_url = public_url.rstrip("/")
        self.secret = secret.encode()
        self.url_seconds = url_seconds

    def _signature(self, method: str, key: str, expires: int) -> str:
        message = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def _signed(self, method: str, key: str) -> str:
        expires = int(time.time() + self.url_seconds)
        signature = self._signature(method, key, expires)
        return f"{self.public_url}{BLOBS}{quote(key)}?expires={expires}&signature={signature}"

    def upload_url(self, key: str, file_type: str, content_length: int) -> str:
        return self._signed("PUT", key)

    def download_url(self, key: str) -> str:
        return self._signed("GET", key)

    def check(self, method: str, key: str, expires: str | None, signature: str | None) -> None:
        """A typed 403 unless the URL was signed by this store for this method and key, and is not
        expired."""
        if not expires or not signature or not expires.isdigit() or len(expires) > 12:
            raise forbidden("bad_signature", "the URL is not signed: ask for a new one")
        wanted = self._signature(method, key, int(expires))
        if not hmac.compare_digest(wanted, signature):
            raise forbidden("bad_signature", "the URL's signature does not match: ask for a new one")
        if int(expires) < time.time():
            raise forbidden("url_expired", "the URL has expired: ask for a new one")

    def _path(self, key: str) -> Path:
        if not valid_key(key):
            raise BankError("not_found.file", "no such file")
        return self.folder / key

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            partial.write_bytes(data)
            partial.replace(path)  # readers see the whole file or none

        await asyncio.to_thread(write)

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return await asyncio.to_thread(lambda: path.read_bytes() if path.is_file() else None)

    async def size(self, key: str) -> int | None:
        path = self._path(key)
        return await asyncio.to_thread(lambda: path.stat().st_size if path.is_file() else None)

    async def aclose(self) -> None:
        return None
