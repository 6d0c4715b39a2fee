"""Old files out of Gradio's cache while the app serves, so a long class does not fill the disk.

Every picture, gallery image, GIF and download the app returns is copied by Gradio into its cache folder
(``GRADIO_TEMP_DIR``, default ``<tmp>/gradio``) and tracked in the Blocks' ``temp_file_sets``. Gradio can delete
them itself (``gr.Blocks(delete_cache=...)``), but its task iterates those live sets while requests add to them;
the first collision ("Set changed size during iteration") ends the task for good and the files pile up again.
:func:`cache_cleanup` does the same job from a lifespan task that iterates over copies and survives errors.

Only files the app itself created are deleted (never other apps' files in a shared cache folder), except those Gradio
keeps for good (component defaults and example inputs, ``keep_in_cache``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["delete_old_files", "cache_cleanup"]

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


def cache_cleanup(every: float, age: float) -> Callable:
    """A FastAPI lifespan (``demo.launch(app_kwargs={"lifespan": ...})``) that runs :func:`delete_old_files`.

    Every ``every`` seconds it deletes the app's cached files older than ``age`` seconds; when the server stops, all
    of them.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def run() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await asyncio.to_thread(delete_old_files, app.get_blocks(), age)
                except Exception:  # a failed round must not end the cleanup for the rest of the class
                    log.exception("cache cleanup failed; trying again in %s s", every)

        task = asyncio.create_task(run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await asyncio.to_thread(delete_old_files, app.get_blocks(), -1)

    return lifespan
