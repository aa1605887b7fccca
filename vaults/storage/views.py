"""The storage endpoint agents use when the portal keeps backups in a local directory.

``/storage/<container>/<blob>``: GET (with ``Range``), HEAD, PUT (create only: a blob is
never overwritten, whatever the grant), DELETE; and
``/storage/<container>/?prefix=…&marker=…`` lists as JSON. Requests authenticate with a
grant token in ``Authorization: HavenGrant <token>`` (``vaults.storage.tokens``), never with
a session: these views are CSRF exempt, and nothing else is. The token never appears in a
URL, so it stays out of access logs. Wire format: agents/runtime/blobstore/http.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from agents.runtime.blobstore import BlobExists, BlobNotFound, InvalidBlobName, StorageError
from agents.runtime.blobstore.http import AUTH_SCHEME
from agents.runtime.blobstore.local import IncompleteUpload, LocalDirectoryStore
from agents.runtime.protocol import MAX_BLOB_BYTES
from vaults.storage.accounts import (
    InvalidContainerName,
    LocalStorageAccount,
    account_for_role,
    check_container_name,
)
from vaults.storage.tokens import GrantRefused, claims_from_header

CHUNK = 1024 * 1024
LIST_PAGE = 1000
LIST_PAGE_MAX = 5000
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_ACTIONS = {"r": "read", "c": "create", "l": "list", "d": "delete"}


def _error(status: int, code: str, message: str, *, head: bool = False) -> HttpResponse:
    if head:  # a HEAD answer has no body; the code still travels, in a header
        response = HttpResponse(status=status)
        response["X-Haven-Error"] = code
    else:
        response = JsonResponse({"error": code, "message": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = AUTH_SCHEME
    return response


def _get_store_for_grant(request: HttpRequest, container: str) -> tuple[LocalDirectoryStore, str]:
    """The container's store and the grant's permissions, after every check a grant must
    pass: signature, container, expiry, account, generation. Raises ``GrantRefused``."""
    claims = claims_from_header(request.headers.get("Authorization", ""), container)
    try:
        check_container_name(container)
        account = account_for_role(claims.account)
    except (InvalidContainerName, ValueError):
        raise GrantRefused("forbidden", "this storage grant names an unknown container") from None
    if not isinstance(account, LocalStorageAccount):
        raise GrantRefused(
            "not found",
            "this portal keeps backups in Azure Storage; its local storage endpoint is off",
            status=404,
        )
    if not account.container_exists(container):
        raise GrantRefused(
            "container not found", f"container {container!r} does not exist", status=404
        )
    if claims.generation != account.generation(container):
        raise GrantRefused(
            "grant revoked", "the storage grant was revoked; ask the portal for a new one"
        )
    return account.store(container), claims.permissions


def _require(permissions: str, letter: str, what: str) -> None:
    if letter not in permissions:
        raise GrantRefused(
            "forbidden", f"this storage grant does not allow {_ACTIONS[letter]} ({what})"
        )


@csrf_exempt
@require_http_methods(["GET"])
def container(request: HttpRequest, container: str) -> HttpResponse:
    try:
        store, permissions = _get_store_for_grant(request, container)
        _require(permissions, "l", "listing blobs")
    except GrantRefused as refused:
        return _error(refused.status, refused.code, refused.message)
    prefix = request.GET.get("prefix", "")
    marker = request.GET.get("marker", "")
    try:
        limit = min(max(int(request.GET.get("limit", LIST_PAGE)), 1), LIST_PAGE_MAX)
    except ValueError:
        return _error(400, "bad request", "limit must be a number")
    blobs, more = [], False
    try:
        for info in store.list(prefix):
            if marker and info.name <= marker:
                continue
            if len(blobs) == limit:
                more = True
                break
            blobs.append(
                {"name": info.name, "size": info.size, "modified": info.modified.isoformat()}
            )
    except StorageError as exc:
        return _error(500, "storage error", str(exc))
    next_marker = blobs[-1]["name"] if more else None
    return JsonResponse({"blobs": blobs, "next_marker": next_marker})


@csrf_exempt
@require_http_methods(["GET", "HEAD", "PUT", "DELETE"])
def blob(request: HttpRequest, container: str, name: str) -> HttpResponse:
    head = request.method == "HEAD"
    try:
        store, permissions = _get_store_for_grant(request, container)
        if request.method in ("GET", "HEAD"):
            _require(permissions, "r", "reading blobs")
            return _read(request, store, name)
        if request.method == "PUT":
            return _write(request, store, permissions, name)
        _require(permissions, "d", "deleting blobs")
        store.delete(name)
        return HttpResponse(status=204)
    except GrantRefused as refused:
        return _error(refused.status, refused.code, refused.message, head=head)
    except InvalidBlobName as exc:
        return _error(400, "invalid name", str(exc), head=head)
    except BlobNotFound as exc:
        return _error(404, "not found", str(exc), head=head)
    except BlobExists as exc:
        return _error(409, "blob exists", str(exc), head=head)
    except IncompleteUpload as exc:
        return _error(400, "incomplete upload", str(exc), head=head)
    except StorageError as exc:
        return _error(500, "storage error", str(exc), head=head)


def _read(request: HttpRequest, store: LocalDirectoryStore, name: str) -> HttpResponse:
    info = store.stat(name)
    if request.method == "HEAD":
        response = HttpResponse(status=200, content_type="application/octet-stream")
        response["Content-Length"] = str(info.size)
        response["Accept-Ranges"] = "bytes"
        return response
    header = request.headers.get("Range")
    if not header:
        response = FileResponse(store.open(name), content_type="application/octet-stream")
        response["Accept-Ranges"] = "bytes"
        return response
    parsed = _parse_range(header, info.size)
    if parsed is None:
        response = _error(416, "range not satisfiable", f"{header!r} is outside the blob")
        response["Content-Range"] = f"bytes */{info.size}"
        return response
    start, end = parsed
    file = store.open(name)
    file.seek(start)
    response = StreamingHttpResponse(
        _file_chunks(file, end - start + 1), status=206, content_type="application/octet-stream"
    )
    response["Content-Length"] = str(end - start + 1)
    response["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    response["Accept-Ranges"] = "bytes"
    return response


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` range, clipped to the blob; None when
    it cannot be satisfied (multiple ranges are not offered)."""
    match = _RANGE_RE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            return None
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


def _file_chunks(file: BinaryIO, remaining: int) -> Iterator[bytes]:
    try:
        while remaining > 0:
            chunk = file.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
    finally:
        file.close()


def _write(
    request: HttpRequest, store: LocalDirectoryStore, permissions: str, name: str
) -> HttpResponse:
    try:
        length = int(request.headers.get("Content-Length", ""))
    except ValueError:
        return _error(411, "length required", "send the blob with a Content-Length header")
    if length < 0 or length > MAX_BLOB_BYTES:
        return _error(413, "too large", f"a blob may hold at most {MAX_BLOB_BYTES} bytes")
    _require(permissions, "c", "creating blobs")
    try:
        existing = store.stat(name).size
    except BlobNotFound:
        existing = None
    if existing is not None and existing != length:
        # Answered before the body is read: another size cannot be the same blob.
        raise BlobExists(name)

    def body() -> Iterator[bytes]:
        # Read the request a chunk at a time: a pack is never held in memory whole.
        while chunk := request.read(CHUNK):
            yield chunk

    size = store.put_stream(name, body(), length=length)
    return JsonResponse({"name": name, "size": size}, status=201)
