"""Old files out of Gradio's cache while the app serves, so a long class does not fill the disk.

Every picture, gallery image, GIF and download the app returns is copied by Gradio into its cache folder
(``GRADIO_TEMP_DIR``, default ``<tmp>/gradio``) and tracked in the Blocks' ``temp_file_sets``. Gradio can delete
them itself (``gr.Blocks(delete_cache=...)``), but its task iterates those live sets while requests add to them;
the first collision ("Set changed size during iteration") ends the task for good and the files pile up again.
:func:`cache_cleanup` does the same job from a lifespan task that iterates over copies and survives errors.

Only files the app itself created are deleted (never other apps' files in a shared cache folder), except those Gradio
keeps for good (component defaults and example inputs, ``keep_in_cache``).

:class:`UploadQuota` bounds what uploads may take on disk meanwhile: a share per client and a total, the oldest going
first, and a clear refusal for a client that uploads more than its share within a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path

__all__ = [
    "delete_old_files",
    "cache_cleanup",
    "release_memory",
    "free_sessions",
    "MemoryPolicy",
    "UploadQuota",
    "UploadLimits",
]

log = logging.getLogger(__name__)


def delete_old_files(blocks, age: float) -> int:
    """Delete the files Gradio cached for ``blocks`` that are more than ``age`` seconds old; returns how many.

    A negative ``age`` deletes them all (what happens when the server stops). The emptied per-file folders stay, as
    with Gradio's own cleanup: removing one could race with Gradio writing the same file into it again.
    """
    keep: set[str] = set()
    for block in list(blocks.blocks.values()):
        keep |= set(getattr(block, "keep_in_cache", ()))
    now, deleted = time.time(), 0
    for paths in list(blocks.temp_file_sets):
        for path in paths.copy():  # a copy made under the GIL: request threads add to the set meanwhile
            if path in keep:
                continue
            try:
                if age >= 0 and now - Path(path).lstat().st_ctime <= age:
                    continue
                os.remove(path)
                deleted += 1
            except FileNotFoundError:
                pass
            paths.discard(path)
    return deleted


def release_memory() -> bool:
    """Give the memory the allocator holds free back to the system (glibc's ``malloc_trim``); False elsewhere.

    Requests are served from many threads, and glibc gives each its own arena; what a burst of requests (a class
    starting at once) allocated and freed stays in those arenas, resident, unless trimmed: measured, 25 clients at
    once took the app from 1.3 to 2.0 GB, and one trim brought it back to 1.4 GB (benchmarks/memory_load.py).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0) >= 0)
    except (OSError, AttributeError):
        return False


def free_sessions(app, idle: float, closed_grace: float) -> int:
    """Forget the sessions whose page was closed ``closed_grace`` seconds ago, or that sent nothing for ``idle``
    seconds; returns how many.

    Gradio keeps a closed page's state for an hour, an API client's until ``state_session_capacity`` newer sessions
    push it out; a session's state holds its last generation (a few MB for the embedded model, tens of MB for SD).
    """
    holder = app.state_holder
    now, freed = datetime.now(), 0
    for session_id in list(holder.session_data):
        session = holder.session_data.get(session_id)
        last = holder.time_last_used.get(session_id)
        if session is None or last is None:
            continue
        quiet = (now - last).total_seconds()
        if quiet > idle or (session.is_closed and quiet > closed_grace):
            holder.delete_state(session_id)  # runs the States' delete callbacks
            with holder.lock:
                holder.session_data.pop(session_id, None)
                holder.time_last_used.pop(session_id, None)
            freed += 1
    return freed


@dataclass(frozen=True)
class MemoryPolicy:
    """How often memory is handed back (seconds), and when a session's state is freed (see :func:`free_sessions`)."""

    every: float = 30.0
    session_idle: float = 3600.0
    closed_grace: float = 120.0


def cache_cleanup(every: float | None, age: float | None, memory: MemoryPolicy | None = None) -> Callable:
    """A FastAPI lifespan (``demo.launch(app_kwargs={"lifespan": ...})``) for a long-running app.

    Every ``every`` seconds it deletes the app's cached files older than ``age`` seconds (:func:`delete_old_files`;
    ``every=None``: never while serving); when the server stops, all of them. With ``memory``, every
    ``memory.every`` seconds it frees the state of sessions that left and hands free memory back to the system.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def repeat(period: float, job: Callable, what: str) -> None:
            while True:
                await asyncio.sleep(period)
                try:
                    await asyncio.to_thread(job)
                except Exception:  # a failed round must not end the cleanup for the rest of the class
                    log.exception("%s failed; trying again in %s s", what, period)

        def files() -> None:
            delete_old_files(app.get_blocks(), age)

        def memory_round() -> None:
            free_sessions(app, memory.session_idle, memory.closed_grace)
            release_memory()

        tasks = []
        if every is not None:
            tasks.append(asyncio.create_task(repeat(every, files, "cache cleanup")))
        if memory is not None:
            tasks.append(asyncio.create_task(repeat(memory.every, memory_round, "memory release")))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if every is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(delete_old_files, app.get_blocks(), -1)

    return lifespan


# -- uploads ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadLimits:
    """Bounds on the uploads kept on disk (bytes), and how long an upload is safe from eviction (seconds)."""

    per_client: int
    total: int
    min_age: float = 60.0  # an upload is used by the request right after it: it is not taken away sooner


@dataclass
class _Upload:
    path: str
    size: int
    client: str
    time: float


def _megabytes(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


class UploadQuota:
    """ASGI middleware around Gradio's ``POST …/upload``: the uploads a client keeps take at most
    ``limits.per_client`` bytes, all clients' at most ``limits.total``.

    Before an upload is taken, room is made by deleting that client's oldest uploads, then the app's oldest, but only
    those older than ``limits.min_age`` (a request may still be about to use a newer one). Where that does not make
    room the upload is refused with HTTP 413 and a message that says why: a client that sends more than its share
    within ``min_age`` seconds, or a class that fills the total within it. A client is its login (the access-token
    cookie with ``--auth``) or else its address (the first ``X-Forwarded-For`` hop when the peer is a local proxy).
    Files the cache cleanup deleted meanwhile are forgotten.
    """

    def __init__(self, app, limits: UploadLimits):
        self.app = app
        self.limits = limits
        self.uploads: list[_Upload] = []  # oldest first; only touched on the event loop

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/upload"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = _client(scope, headers)
        incoming = int(headers.get("content-length") or 0)
        refusal = self._make_room(scope, client, incoming)
        if refusal is not None:
            await _plain(send, 413, refusal)
            return
        chunks, status = [], [0]

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capture)
        if status[0] == 200:
            with contextlib.suppress(ValueError, TypeError):
                for path in json.loads(b"".join(chunks)):
                    with contextlib.suppress(OSError):
                        self.uploads.append(_Upload(path, os.path.getsize(path), client, time.time()))

    def usage(self, client: str | None = None) -> int:
        """Bytes of uploads kept, by ``client`` or by all."""
        return sum(u.size for u in self.uploads if client is None or u.client == client)

    def _make_room(self, scope, client: str, incoming: int) -> str | None:
        """Delete the oldest uploads until ``incoming`` bytes fit; the refusal message when they cannot."""
        limits = self.limits
        self.uploads = [u for u in self.uploads if os.path.exists(u.path)]
        if incoming > limits.per_client:
            return (
                f"One upload may carry at most {_megabytes(limits.per_client)}; this one has {_megabytes(incoming)}."
            )
        blocks = scope["app"].get_blocks() if hasattr(scope.get("app"), "get_blocks") else None
        for mine, limit in ((True, limits.per_client), (False, limits.total)):
            while self.usage(client if mine else None) + incoming > limit:
                old = next(
                    (
                        u
                        for u in self.uploads
                        if (u.client == client or not mine) and time.time() - u.time > limits.min_age
                    ),
                    None,
                )
                if old is None:
                    if mine:
                        return (
                            f"Your uploads of the last {limits.min_age:g} s take {_megabytes(self.usage(client))}; "
                            f"each client may keep {_megabytes(limits.per_client)}. Wait a minute, then upload again "
                            "(your oldest uploads make room)."
                        )
                    return (
                        f"The app's room for uploads ({_megabytes(limits.total)}) is full with uploads of the last "
                        f"{limits.min_age:g} s; try again in a minute."
                    )
                self.uploads.remove(old)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old.path)
                if blocks is not None:
                    blocks.upload_file_set.discard(old.path)
        return None


def _client(scope, headers: dict[str, str]) -> str:
    cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
    token = next((v for k, v in cookies.items() if k.startswith("access-token")), None)
    if token:
        return f"login:{token}"
    host = (scope.get("client") or ("unknown", 0))[0]
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    with contextlib.suppress(ValueError):
        if forwarded and ip_address(host).is_loopback:  # a local proxy or the share tunnel: its client's address
            return f"address:{forwarded}"
    return f"address:{host}"


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
