"""S3 access for the storage layer: URLs, the client (credentials and endpoint as the AWS tools take them),
errors translated to ours, retries.

Credentials come from botocore's usual chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` or ``--profile`` over ``~/.aws/credentials`` and ``~/.aws/config``,
then instance roles.  The endpoint: ``--endpoint-url``, else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``
or the profile's ``endpoint_url``, else AWS; an ``http://`` endpoint is used as given.  With a custom
endpoint buckets are addressed by path (what on-premises stores serve), and the region defaults to
``us-east-1``.  botocore retries throttling, 5xx answers and connection errors (``standard`` mode, 5
attempts unless ``AWS_MAX_ATTEMPTS`` says otherwise); ``retrying`` adds attempts for a body cut off
mid-transfer.  The client is thread-safe and shared by the process.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import Error, NotFoundError, PermissionDeniedError, TargetIOError, UsageError

SCHEME = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
BODY_ATTEMPTS = 4  # GETs re-issued when a body is cut off (each GET is retried by botocore too)
DEFAULT_REGION = "us-east-1"

log = logging.getLogger("imaging_utility.s3")
T = TypeVar("T")


def is_s3(name: str) -> bool:
    return name.startswith(SCHEME)


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not is_s3(url):
            raise UsageError(f"not an s3:// URL: {url}")
        bucket, _, key = url[len(SCHEME):].partition("/")
        if not _BUCKET.match(bucket):
            raise UsageError(f"{url}: {bucket!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
        if len(key.encode()) > 1024:
            raise UsageError(f"{url}: the key is longer than S3's 1024 bytes")
        return cls(bucket, key)

    def with_key(self, key: str) -> S3Url:
        return S3Url(self.bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


_settings: dict[str, str | None] = {"profile": None, "endpoint_url": None}
_clients: list[Any] = []  # the process's client, made on first use
_client_lock = threading.Lock()


def configure(profile: str | None = None, endpoint_url: str | None = None) -> None:
    """``--profile`` / ``--endpoint-url`` from the command line (before the first S3 call)."""
    with _client_lock:
        _settings.update(profile=profile, endpoint_url=endpoint_url)
        _clients.clear()


def _forget_client() -> None:
    """In a forked child: its parent's client holds the parent's connections; make a new one.  (The NBD
    server forks its helpers before any thread exists, so the lock is free.)"""
    _clients.clear()


os.register_at_fork(after_in_child=_forget_client)


def client() -> Any:
    """The process's S3 client (botocore clients are thread-safe)."""
    with _client_lock:
        if not _clients:
            _clients.append(_make_client())
        return _clients[0]


def _make_client() -> Any:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions as bx
    except ImportError:
        raise UsageError("s3:// needs boto3: pip install boto3") from None
    profile = _settings["profile"]
    try:
        session = boto3.session.Session(profile_name=profile)
    except bx.ProfileNotFound:
        raise UsageError(f"AWS profile {profile!r} is not in ~/.aws/credentials or ~/.aws/config") from None
    endpoint = (_settings["endpoint_url"] or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or _profile_endpoint(session))
    if endpoint and not re.match(r"^https?://", endpoint):
        raise UsageError(f"endpoint URL {endpoint!r} must start with http:// or https://")
    region = session.region_name or (DEFAULT_REGION if endpoint else None)
    retries: dict[str, Any] = {"mode": os.environ.get("AWS_RETRY_MODE", "standard")}
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = 5
    config = botocore.config.Config(
        region_name=region or DEFAULT_REGION,
        retries=retries,  # type: ignore[arg-type,unused-ignore]
        max_pool_connections=64,
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    return session.client("s3", endpoint_url=endpoint or None, config=config)


def _profile_endpoint(session: Any) -> str | None:
    try:
        scoped = session._session.get_scoped_config()  # the profile's endpoint_url (botocore reads it too)
    except Exception:
        return None
    value = scoped.get("endpoint_url")
    return value if isinstance(value, str) else None


def endpoint() -> str:
    return str(client().meta.endpoint_url)


# --- errors ---------------------------------------------------------------------------------

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "AllAccessDisabled", "AccountProblem", "403", "Forbidden", "InvalidSecurity", "TokenRefreshRequired"}
_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "404", "NotFound"}


def error_code(e: BaseException) -> tuple[str, int]:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return "", 0
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(response.get("Error", {}).get("Code", "") or status), status


def is_missing(e: BaseException) -> bool:
    code, status = error_code(e)
    return code in _MISSING or status == 404


def body_cut(e: BaseException) -> bool:
    """A failure botocore does not retry: the body of an answer cut off mid-transfer."""
    import botocore.exceptions as bx

    return isinstance(e, bx.IncompleteReadError | bx.ResponseStreamingError | bx.ReadTimeoutError
                      | bx.ConnectionClosedError | ConnectionError) or type(e).__module__.startswith("urllib3")


def translate(e: BaseException, url: S3Url | str, what: str) -> Error:
    """Our error (with its exit code) for a failed S3 call on ``url`` while ``what``."""
    import botocore.exceptions as bx

    if isinstance(e, Error):
        return e
    if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
        return PermissionDeniedError(
            f"no usable AWS credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or name a profile of ~/.aws/credentials with --profile")
    if isinstance(e, bx.ParamValidationError):
        return UsageError(f"{url}: {e}")
    if isinstance(e, bx.ClientError):
        code, status = error_code(e)
        bucket = url.bucket if isinstance(url, S3Url) else str(url)
        if code == "NoSuchBucket":
            return NotFoundError(f"bucket {bucket!r} does not exist at {endpoint()} (while {what} {url})")
        if code in _MISSING or status == 404:
            return NotFoundError(f"{url} not found (while {what})")
        if code in _DENIED or status == 403:
            return PermissionDeniedError(
                f"access to {url} denied while {what} ({code}): check the credentials (AWS_* variables, "
                "--profile) and the bucket's policy")
        if code == "InvalidBucketName":
            return UsageError(f"{url}: invalid bucket name")
        if code in ("EntityTooLarge", "QuotaExceeded", "XMinioStorageFull"):
            from ..errors import NoSpaceError

            return NoSpaceError(f"the S3 store refused {url} while {what}: {code}")
        return TargetIOError(f"S3 error on {url} while {what}: {code} (HTTP {status})")
    if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return TargetIOError(f"cannot reach the S3 endpoint {endpoint()} while {what} {url}; "
                             "check --endpoint-url / AWS_ENDPOINT_URL and that the store is up")
    if isinstance(e, bx.BotoCoreError | OSError):
        return TargetIOError(f"S3 I/O error on {url} while {what}: {e}")
    return TargetIOError(f"S3 error on {url} while {what}: {type(e).__name__}: {e}")


def retrying(call: Callable[[], T], url: S3Url | str, what: str, attempts: int = BODY_ATTEMPTS) -> T:
    """``call()`` again (with backoff) after a body cut off mid-transfer (botocore retried the request
    itself already); any failure left is translated."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:
            if attempt + 1 >= attempts or not body_cut(e):
                raise translate(e, url, what) from None
            log.debug("S3 %s %s failed (%s), retrying", what, url, e)
            time.sleep(min(4.0, 0.25 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")
