"""Download a checkpoint by URL with a known sha256, for ``m2a-pipe weights fetch``.

Fleets keep their fine-tuned checkpoints on their own servers; a cluster job must get the
same bytes every time, so a fetch names the sha256 it expects. :func:`download` streams an
``http://``, ``https://`` or ``file://`` URL (standard library ``urllib``) into a temporary
file beside its target while hashing it, and keeps the file only when the digest matches;
a wrong digest, an unreachable server or an HTTP error removes the partial file and raises
:class:`FetchError` with one line. Conversion and registration are the caller's
(:func:`m2a_pipe.model.loading.add_weights`), after the checksum.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from m2a_pipe.model.registry import WeightsError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
SCHEMES = ("http", "https", "file")


class FetchError(WeightsError):
    """A download failed: unreachable, refused, cut short, or not the expected sha256."""


def check_sha256_text(text: str) -> str:
    """``text`` as a lower-case 64-digit hex sha256; raises FetchError otherwise."""
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(f"--sha256 {text!r}: not a sha256 (64 hex digits)")
    return digest


def url_file_name(url: str) -> str:
    """The last path segment of ``url`` (``model_final.pth``); raises FetchError for an
    unsupported scheme or a URL that names no file."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in SCHEMES:
        raise FetchError(f"{url}: unsupported URL scheme {parsed.scheme or '(none)'!r}; use http, https or file")
    name = Path(urllib.parse.unquote(parsed.path)).name
    if not name:
        raise FetchError(f"{url}: the URL names no file")
    return name


def download(url: str, target: str | os.PathLike, sha256: str, *,
             progress: Callable[[int, int | None], None] | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``target`` when its sha256 is ``sha256``.

    The bytes go to ``.<target name>.part-<pid>`` in the target's folder and are renamed to
    ``target`` only after the whole body arrived and its digest matched, so ``target``
    never holds a partial or wrong file. ``progress(bytes_so_far, total_or_None)`` is called
    after each chunk. Raises FetchError (one line naming the URL) and leaves no file behind.
    """
    expected = check_sha256_text(sha256)
    url_file_name(url)
    target = Path(target)
    part = target.with_name(f".{target.name}.part-{os.getpid()}")
    digest = hashlib.sha256()
    done = 0
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except urllib.error.HTTPError as err:
            raise FetchError(f"{url}: the server answered HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            reason = getattr(err.reason, "strerror", None) or str(err.reason)
            raise FetchError(f"{url}: unreachable ({reason})") from None
        except (TimeoutError, ConnectionError) as err:
            raise FetchError(f"{url}: connection lost after {done:,} bytes ({err})") from None
        if total is not None and done != total:
            raise FetchError(f"{url}: cut short: {done:,} of {total:,} bytes")
        actual = digest.hexdigest()
        if actual != expected:
            raise FetchError(f"{url}: sha256 mismatch: expected {expected}, got {actual} ({done:,} bytes); "
                             "nothing was registered")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target
