"""The S3 calls the mirror needs, through AWS's own client (boto3), imported here only.

boto3 signs (SigV4), presigns, and uploads large files in parallel parts with its
transfer manager, the way every S3-compatible store expects. What it raises becomes
one `MirrorError` line without credentials; `mirror_wide` marks a failure of the whole
mirror (refused credentials, unreachable endpoint, no bucket): the caller stops asking
it for the rest of the batch and uses the origins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import CfdError
from .config import MirrorConfig

PRESIGN_SECONDS = 6 * 3600  # a big file over a slow link, resumed within the same run
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "403",
                     "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for the mirror"


class MirrorError(CfdError):
    def __init__(self, message: str, hint: str | None = None, mirror_wide: bool = False) -> None:
        super().__init__(message, hint)
        self.mirror_wide = mirror_wide

    def line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


def unreachable(where: str, kind: str) -> MirrorError:
    return MirrorError(f"the mirror endpoint {where} is unreachable ({kind})",
                       "check cfd.mirror.endpoint and that the store is running", mirror_wide=True)


def refused(url: str, code: object) -> MirrorError:
    return MirrorError(f"the mirror {url} refused the credentials ({code})", CREDENTIALS_HINT, mirror_wide=True)


def no_bucket(bucket: str, where: str) -> MirrorError:
    return MirrorError(f"the mirror bucket {bucket} does not exist at {where}", "create it, or fix cfd.mirror", mirror_wide=True)


class MirrorClient:
    def __init__(self, config: MirrorConfig) -> None:
        import boto3
        from botocore.config import Config

        self.config = config
        session = boto3.session.Session()
        options: dict[str, Any] = {
            # rclone's S3 server (and some NAS gateways) refuse the legacy presign: SigV4 everywhere.
            "signature_version": "s3v4",
            # Stores that are not AWS serve path-style URLs; AWS itself takes either.
            "s3": {"addressing_style": "path" if config.endpoint else "auto"},
            # A ranged GET on some stores carries the whole object's CRC (rclone 1.75): the bytes
            # are verified by cfd against the manifest anyway.
            "response_checksum_validation": "when_required",
            "request_checksum_calculation": "when_required",
            # Bounded: a mirror that accepts connections and then says nothing costs a hook at most
            # about a minute, once (the batch then stops asking it), never the whole time budget.
            "connect_timeout": 5,
            "read_timeout": 30,
            "retries": {"max_attempts": 2, "mode": "standard"},
            "max_pool_connections": 16,
        }
        self.s3 = session.client("s3", endpoint_url=config.endpoint, region_name=session.region_name or "us-east-1",
                                 config=Config(**options))

    # -- errors --------------------------------------------------------------

    def _error(self, exc: Exception, what: str) -> MirrorError:
        from botocore import exceptions as bx

        where = self.config.endpoint or "AWS S3"
        if isinstance(exc, bx.NoCredentialsError):
            return MirrorError(f"no credentials for the mirror {self.config.url}", CREDENTIALS_HINT, mirror_wide=True)
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                            bx.ConnectionClosedError)):
            return unreachable(where, type(exc).__name__)
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in CREDENTIAL_CODES or status == 403:
                return refused(self.config.url, code or status)
            if code == "NoSuchBucket":
                return no_bucket(self.config.bucket, where)
            return MirrorError(f"the mirror answered {code or status} to {what}")
        if isinstance(exc, bx.BotoCoreError):
            return MirrorError(f"the mirror failed at {what}: {type(exc).__name__}")
        return MirrorError(f"the mirror failed at {what}: {type(exc).__name__}")

    @staticmethod
    def _missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code", "")) in _MISSING_CODES

    # -- calls ---------------------------------------------------------------

    def size_of(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        try:
            return int(self.s3.head_object(Bucket=self.config.bucket, Key=key)["ContentLength"])
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback
            if self._missing(exc):
                return None
            raise self._error(exc, f"HEAD {key}") from None

    def get_small(self, key: str, limit: int) -> bytes | None:
        """A small object's bytes (at most `limit` + 1 are read), or None when it does not exist."""
        try:
            body = self.s3.get_object(Bucket=self.config.bucket, Key=key, Range=f"bytes=0-{limit}")["Body"]
            try:
                return body.read(limit + 1)
            finally:
                body.close()
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return None
            raise self._error(exc, f"GET {key}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=data, ContentType="application/json")
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"PUT {key}") from None

    def upload_file(self, path: str, key: str, progress: Callable[[int], None] | None = None) -> None:
        """Parallel multipart upload (boto3's transfer manager); a failed one is aborted, the next push restarts it."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)
        try:
            self.s3.upload_file(path, self.config.bucket, key, Config=transfer, Callback=progress,
                                ExtraArgs={"ContentType": "application/octet-stream"})
        except Exception as exc:  # noqa: BLE001
            cause = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__ or exc
            raise self._error(cause if isinstance(cause, Exception) else exc, f"upload of {key}") from None

    def presign_get(self, key: str) -> str:
        """A SigV4 GET URL for `key` (computed locally: no request)."""
        try:
            return str(self.s3.generate_presigned_url("get_object", Params={"Bucket": self.config.bucket, "Key": key},
                                                      ExpiresIn=PRESIGN_SECONDS))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"presigning {key}") from None

    def keys(self, prefix: str, limit: int = 1_000_000) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under `prefix`, at most `limit`."""
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.config.bucket, Prefix=prefix)
            count = 0
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"]), int(item["Size"])
                    count += 1
                    if count >= limit:
                        return
        except MirrorError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"listing {prefix}") from None
