"""Attachments in S3 (decision 0046): presigned URLs, signed with AWS Signature Version 4 in the query
string, so the client's bytes go straight to the bucket and never through the bank.

The signer is our own, about sixty lines of HMAC (decision 0046 says why not botocore). It follows AWS's
"Authenticating Requests: Using Query Parameters (AWS Signature Version 4)"; the tests run it against
S3Proxy, an S3 server written independently in Java, which checks every signature, signed header and
expiry as S3 does.

* An upload URL signs `PUT`, the object's key, and the headers `content-length`, `content-type` and
  `host`: a body of another length or another type, another key, another method, a later expiry or any
  changed character is refused by S3 itself (403 `SignatureDoesNotMatch`, or `AccessDenied` "Request has
  expired"), before a byte is stored.
* A download URL signs `GET` and the key. The service reads an object's size with a signed `HEAD`.
* Path-style addresses (`<endpoint>/<bucket>/<key>`): S3, S3Proxy, MinIO and Ceph all serve them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import httpx

from shared.errors import BankError

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_EXPIRES = 7 * 24 * 3600  # SigV4's own limit for a presigned URL


def _uri_encode(text: str, *, slash: bool) -> str:
    """SigV4's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ percent-encoded (and '/' unless `slash`)."""
    return quote(text, safe="/~" if not slash else "~")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class SigV4Presigner:
    """Presigned URLs for one S3 endpoint, region and key pair."""

    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an S3 endpoint is http(s)://host[:port], not {endpoint!r}")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        default_port = 443 if parts.scheme == "https" else 80
        # The Host header clients send: the port only when it is not the scheme's own.
        self.host = parts.hostname if parts.port in (None, default_port) else f"{parts.hostname}:{parts.port}"
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key

    def presign(
        self,
        method: str,
        path: str,
        seconds: int,
        *,
        headers: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> str:
        """`path` is the request's path, unencoded (`/bucket/key`); `headers` are signed, so the request
        must carry exactly them."""
        if not 1 <= seconds <= MAX_EXPIRES:
            raise ValueError(f"a presigned URL lasts 1 s to 7 days, not {seconds} s")
        when = (now or datetime.now(UTC)).astimezone(UTC)
        stamp, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
        scope = f"{day}/{self.region}/s3/aws4_request"
        signed = {k.lower(): " ".join(v.strip().split()) for k, v in (headers or {}).items()}
        signed["host"] = self.host
        names = sorted(signed)
        query = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{self.access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(seconds),
            "X-Amz-SignedHeaders": ";".join(names),
        }
        canonical_query = "&".join(
            f"{_uri_encode(k, slash=True)}={_uri_encode(v, slash=True)}" for k, v in sorted(query.items())
        )
        canonical_uri = _uri_encode(path, slash=False)
        canonical_request = "\n".join(
            [
                method,
                canonical_uri,
                canonical_query,
                "".join(f"{name}:{signed[name]}\n" for name in names),
                ";".join(names),
                UNSIGNED,
            ]
        )
        to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
        key = _hmac(f"AWS4{self.secret_key}".encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self.endpoint}{canonical_uri}?{canonical_query}&X-Amz-Signature={signature}"


class S3Store:
    """The `ObjectStore` (storage.py) on an S3 bucket: presigned upload and download URLs, a signed HEAD
    for an object's size."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        url_seconds: float,
        *,
        timeout: float = 5.0,
    ) -> None:
        self.signer = SigV4Presigner(endpoint, region, access_key, secret_key)
        self.bucket = bucket
        self.url_seconds = max(1, min(MAX_EXPIRES, int(url_seconds)))
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None

    def _path(self, key: str) -> str:
        return f"/{self.bucket}/{key}"

    def upload_url(self, key: str, file_type: str, content_length: int) -> str:
        headers = {"content-length": str(content_length), "content-type": file_type}
        return self.signer.presign("PUT", self._path(key), self.url_seconds, headers=headers)

    def download_url(self, key: str) -> str:
        return self.signer.presign("GET", self._path(key), self.url_seconds)

    async def size(self, key: str) -> int | None:
        url = self.signer.presign("HEAD", self._path(key), 60)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._timeout)
        try:
            answer = await self._http.head(url)
        except httpx.HTTPError as exc:
            raise _unavailable(f"{type(exc).__name__}") from exc
        if answer.status_code == 404:
            return None
        if answer.status_code != 200 or "content-length" not in answer.headers:
            raise _unavailable(f"HEAD answered {answer.status_code}")
        return int(answer.headers["content-length"])

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _unavailable(why: str) -> BankError:
    return BankError("service_unavailable.storage", f"the file store cannot be read right now ({why})")
