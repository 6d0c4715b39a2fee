"""A shared classroom link under stress: bad input on every endpoint family, Stop and cancel mid-run, 20 clients at
once, 100 runs in a row (memory and disk stay flat), file-route security, safetensors-only loading, --share warning.

The app is served in-process on a free loopback port (as in test_app_client.py) and driven through gradio_client;
raw HTTP (httpx) is used where gradio_client refuses to send a request (NaN in JSON) or to look at status codes.
Generations use 1-2 steps at 32x32 unless the step count is what is tested.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.usecases import task_models_available

pytestmark = pytest.mark.skipif(
    not ((EMBEDDED_MODEL_DIR / "model_index.json").is_file() and task_models_available()),
    reason="embedded model or models/tiny-shapes-tasks missing",
)

PROMPT = "a big red circle on the left"
SIZE = 32  # px: the smallest multiple of 16 that still has a 2x2 cross-attention map at the U-Net's bottom
CACHE_POLICY = (1, 4)  # cache cleanup (every, older than) in seconds, short enough to watch it work
SEQUENTIAL_RUNS = 100
CONCURRENT_CLIENTS = 20
CLIENT_TIMEOUT_S = 600  # a request the server never answers fails the test instead of hanging the suite


@dataclass
class Served:
    """The app served in-process: its URL, Blocks, Engine and Gradio cache folder."""

    url: str
    demo: object
    engine: object
    cache_dir: Path

    def attend_tab(self):
        """The Denoise tab's handler object (its per-session stop flags and run counters)."""
        fn = next(f for f in self.demo.fns.values() if f.api_name == "generate")
        return fn.fn.__self__


@pytest.fixture(scope="module")
def served(tmp_path_factory, engine) -> Served:
    cache_dir = tmp_path_factory.mktemp("gradio-cache")
    saved = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE")}
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)  # this app's files only: the folder the cache test watches
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
    from demo.app import launch_options, serve_local

    demo, url = serve_local(engine, launch_options(delete_cache=CACHE_POLICY))
    try:
        yield Served(url, demo, engine, cache_dir)
    finally:
        demo.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served.url, verbose=False)


# -- input files --------------------------------------------------------------------------------------------------------
def _region() -> np.ndarray:
    """(64, 64) bool: the right half's middle, 32 x 32 = 1024 pixels."""
    region = np.zeros((64, 64), bool)
    region[16:48, 32:64] = True
    return region


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every upload the bad-input cases need, by name."""
    from demo.tab_usecases import world_sample

    folder = tmp_path_factory.mktemp("uploads")
    image, _ = world_sample()
    region = _region()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[region] = 255  # a white stroke on a transparent layer, as the brush paints
    mask16 = np.zeros((64, 64), np.uint16)
    mask16[region] = 65535  # fill
    mask16[:16] = 20000  # 0.31 of full scale: keep (a clipping 16 -> 8 bit conversion would call it white)
    big = np.zeros((128, 128), np.uint8)
    big[32:96, 64:128] = 255  # the same region at twice the size
    gradient16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    arrays = {
        "image.png": image,
        "mask_black.png": np.zeros((64, 64), np.uint8),
        "mask_white.png": np.full((64, 64), 255, np.uint8),
        "mask_wide.png": np.full((32, 64), 255, np.uint8),
        "mask_big.png": big,
        "mask_rgba.png": rgba,
        "mask_16bit.png": mask16,
        "image_16bit.png": gradient16,
        "too_wide.png": np.zeros((10, 5000, 3), np.uint8),
    }
    paths = {}
    for name, array in arrays.items():
        Image.fromarray(array).save(folder / name)
        paths[name] = str(folder / name)
    assert Image.open(paths["mask_16bit.png"]).mode == "I;16"
    (folder / "garbage.png").write_bytes(np.random.default_rng(0).bytes(3000))  # not an image, image name
    (folder / "notes.txt").write_text("not an image")
    paths |= {"garbage.png": str(folder / "garbage.png"), "notes.txt": str(folder / "notes.txt")}
    return paths


# -- helpers ------------------------------------------------------------------------------------------------------------
def _gen(prompt=PROMPT, negative="", seed=0, steps=2, guidance=7.5, scheduler="default", h=SIZE, w=SIZE) -> tuple:
    return (prompt, negative, seed, steps, guidance, scheduler, h, w)


def _editor(files: dict[str, str], mask: str | None, background: str = "image.png") -> dict:
    return {
        "background": handle_file(files[background]),
        "layers": [handle_file(files[mask])] if mask else [],
        "composite": None,
    }


def _outpaint(files, image: str, right: int = 16) -> tuple:
    return (handle_file(files[image]), PROMPT, 0, right, 0, 0, 1.0, "unet", 0, 1)


def _captions(gallery) -> list[str]:
    return [item["caption"] for item in gallery]


def _raw_call(url: str, api: str, data: list) -> dict:
    """POST ``data`` as JSON (NaN allowed, which gradio_client refuses to send) and return the final SSE event."""
    body = json.dumps({"data": data})  # allow_nan: NaN / Infinity literals, as a hand-written request can send
    with httpx.Client(base_url=url, timeout=60) as web:
        event_id = web.post(f"gradio_api/call{api}", content=body, headers={"content-type": "application/json"})
        event_id.raise_for_status()
        stream = web.get(f"gradio_api/call{api}/{event_id.json()['event_id']}").text
    kind = re.findall(r"^event: (\w+)", stream, re.M)[-1]
    payload = json.loads(re.findall(r"^data: (.*)$", stream, re.M)[-1])
    return {"event": kind, "data": payload}


def _still_serving(client: Client) -> None:
    assert "slots used" in client.predict("still serving", api_name="/tokenize")[2]


# -- bad input, endpoint by endpoint ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One bad (or odd but acceptable) input: the call, and the error it must get or the check of its result."""

    name: str
    api: str
    args: Callable[[dict], tuple]
    error: str | None = None  # regex the AppError message must match (None: a valid result is expected)
    check: Callable[[tuple, dict], None] | None = None  # (outputs, upload paths)
    raw: bool = False  # send with raw HTTP (NaN / inf in the JSON)


def _words(*words: str) -> Callable[[tuple, dict], None]:
    """The generation ran and its word maps are exactly these words, in the prompt's order (RTL kept as typed)."""

    def check(out, files):
        assert out[1].startswith("Done: 2 steps")
        assert _captions(out[2]) == [f"“{w}”" for w in words]

    return check


def _filled(pixels: int, *notes: str) -> Callable[[tuple, dict], None]:
    """The inpainting ran, filled exactly ``pixels`` pixels and says ``notes``."""

    def check(out, files):
        mask, _raw, image, _plot, _gallery, summary = out
        assert f"{pixels} pixels filled" in summary, summary
        assert int((np.asarray(Image.open(mask).convert("L")) > 127).sum()) == pixels
        assert Image.open(image).size == (64, 64)
        for note in notes:
            assert note in summary, summary

    return check


def _outpainted_16bit(out, files) -> None:
    """The 16-bit image was scaled to 8 bit (not clipped to white) and extended by 16 px."""
    original, image, _plot, _gallery, summary = out
    expected = np.round(np.asarray(Image.open(files["image_16bit.png"]), np.float64) / 257).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(original).convert("L")), expected)
    assert "16-bit values scaled to 8 bit" in summary
    assert Image.open(image).size == (80, 64)


LONG = ("red circle " * 500)[:5000]
CASES = [
    # /generate: prompts
    Case("empty prompt", "/generate", lambda f: _gen(""), "The prompt is empty"),
    Case("whitespace prompt", "/generate", lambda f: _gen("  \n\t "), "The prompt is empty"),
    Case(
        "5000-character prompt",
        "/generate",
        lambda f: _gen(LONG),
        r"^The prompt is \d+ tokens long; the text encoder has 77 slots, 75 for words .* \d+ tokens would be cut, "
        r"starting with “circle red circle red .*” and \d+ more\. Shorten it\.$",
    ),
    Case(
        "30 000-character prompt",
        "/generate",
        lambda f: _gen("a" * 30_000),
        r"^The prompt is 30000 characters long; .* at most 20000\. Shorten it\.$",
    ),
    Case("5000-character negative prompt", "/generate", lambda f: _gen(negative=LONG), r"^The negative prompt is"),
    # emoji are tokens without letters: the content-words view hides them like punctuation, the words still map
    Case("emoji prompt", "/generate", lambda f: _gen("🔴 a red circle 🎉"), check=_words("red", "circle")),
    Case("Arabic prompt", "/generate", lambda f: _gen("دائرة حمراء كبيرة"), check=_words("دائرة", "حمراء", "كبيرة")),
    Case("Hebrew prompt", "/generate", lambda f: _gen("עיגול אדום גדול"), check=_words("עיגול", "אדום", "גדול")),
    # /generate: numbers
    Case("steps 0", "/generate", lambda f: _gen(steps=0), r"^Steps must be a number from 1 to 150; got 0 "),
    Case(
        "steps 10 000", "/generate", lambda f: _gen(steps=10_000), r"^Steps must be a number from 1 to 150; got 10000"
    ),
    Case("steps 2.5", "/generate", lambda f: _gen(steps=2.5), r"^steps must be a whole number \(got 2\.5\)"),
    Case(
        "steps NaN", "/generate", lambda f: _gen(steps=float("nan")), r"^Steps must be a number .*; got nan", raw=True
    ),
    Case(
        "guidance NaN",
        "/generate",
        lambda f: _gen(guidance=float("nan")),
        r"^Guidance scale .* 0 to 30; got nan",
        raw=True,
    ),
    Case(
        "guidance inf",
        "/generate",
        lambda f: _gen(guidance=float("inf")),
        r"^Guidance scale .* 0 to 30; got inf",
        raw=True,
    ),
    Case(
        "guidance -1",
        "/generate",
        lambda f: _gen(guidance=-1),
        r"^Guidance scale must be a number from 0 to 30; got -1",
    ),
    Case("height 0", "/generate", lambda f: _gen(h=0), r"^Height \(px\) must be a number from 16 to 128; got 0 "),
    Case("height 7", "/generate", lambda f: _gen(h=7), r"^Height \(px\) must be a number from 16 to 128; got 7 "),
    Case(
        "width 100 000",
        "/generate",
        lambda f: _gen(w=100_000),
        r"^Width \(px\) must be a number from 16 to 128; got 100000 ",
    ),
    Case(
        "width 100",
        "/generate",
        lambda f: _gen(w=100),
        r"^width 100 is not allowed: use a multiple of 16 from 16 to 128",
    ),
    Case(
        "seed -1",
        "/generate",
        lambda f: _gen(seed=-1),
        r"^Seed must be a number from 0 to 4294967295; got -1 \(less than minimum value 0\)",
    ),
    Case(
        "seed 2^40",
        "/generate",
        lambda f: _gen(seed=2**40),
        r"^Seed must be a number from 0 to 4294967295; got 1099511627776 \(greater than maximum",
    ),
    Case(
        "seed NaN",
        "/generate",
        lambda f: _gen(seed=float("nan")),
        r"^Seed must be a number from 0 to 4294967295; got nan",
        raw=True,
    ),
    Case(
        "unknown scheduler",
        "/generate",
        lambda f: _gen(scheduler="bogus"),
        r"^Scheduler \(sampler\): .*not in the list",
    ),
    # use cases
    Case(
        "stylize strength x steps = 0",
        "/stylize",
        lambda f: (handle_file(f["image.png"]), ["striped"], PROMPT, 0.05, 0, 3),
        r"strength 0\.05 x 3 steps rounds down to 0 denoising steps .*use strength >= 0\.333",
    ),
    Case(
        "upscale: bytes that are not an image",
        "/upscale",
        lambda f: (handle_file(f["garbage.png"]), PROMPT, 20, 0, 1),
        r"^Image \(any size: brought to 16x16\): garbage\.png is not an image this app can read",
    ),
    Case(
        "upscale: 5000 pixels wide",
        "/upscale",
        lambda f: (handle_file(f["too_wide.png"]), PROMPT, 20, 0, 1),
        r"too_wide\.png is 5000 x 10 pixels; the longest side allowed is 4096",
    ),
    Case("inpaint: nothing painted", "/inpaint", lambda f: (_editor(f, None), PROMPT, "unet", 0, 1), "mask is empty"),
    Case(
        "inpaint: black mask (keep everything)",
        "/inpaint",
        lambda f: (_editor(f, "mask_black.png"), PROMPT, "unet", 0, 1),
        r"mask is empty \(all black\): nothing to fill",
    ),
    Case(
        "inpaint: all-white mask",
        "/inpaint",
        lambda f: (_editor(f, "mask_white.png"), PROMPT, "unet", 0, 1),
        check=_filled(64 * 64, "covers the whole image"),
    ),
    Case(
        "inpaint: mask of another aspect ratio",
        "/inpaint",
        lambda f: (_editor(f, "mask_wide.png"), PROMPT, "unet", 0, 1),
        r"mask is 64x32 but the image is 64x64: different aspect ratios",
    ),
    Case(
        "inpaint: mask twice the size",
        "/inpaint",
        lambda f: (_editor(f, "mask_big.png"), PROMPT, "unet", 0, 1),
        check=_filled(1024, "resized 128x128 -> 64x64"),
    ),
    Case(
        "inpaint: RGBA stroke layer",
        "/inpaint",
        lambda f: (_editor(f, "mask_rgba.png"), PROMPT, "blend", 0, 1),
        check=_filled(1024),
    ),
    Case(
        "inpaint: 16-bit mask",
        "/inpaint",
        lambda f: (_editor(f, "mask_16bit.png"), PROMPT, "unet", 0, 1),
        check=_filled(1024, "16-bit values scaled to 8 bit"),
    ),
    Case(
        "inpaint: mask bytes that are not an image",
        "/inpaint",
        lambda f: (_editor(f, "garbage.png"), PROMPT, "unet", 0, 1),
        r"^Paint the region to fill \(white brush\): garbage\.png is not an image this app can read",
    ),
    Case(
        "inpaint: a text file as the image",
        "/inpaint",
        lambda f: (_editor(f, "mask_white.png", background="notes.txt"), PROMPT, "unet", 0, 1),
        r"notes\.txt is not an image this app can read",
    ),
    Case(
        "outpaint: bytes that are not an image",
        "/outpaint",
        lambda f: _outpaint(f, "garbage.png"),
        r"^Image: garbage\.png is not an image this app can read",
    ),
    Case("outpaint: 16-bit image", "/outpaint", lambda f: _outpaint(f, "image_16bit.png"), check=_outpainted_16bit),
    Case(
        "outpaint: nothing to extend", "/outpaint", lambda f: _outpaint(f, "image.png", right=0), "nothing to outpaint"
    ),
    # CLIP, noise, steering
    Case("tokenize: whitespace", "/tokenize", lambda f: ("   ",), "The prompt is empty"),
    Case(
        "zero-shot: bytes that are not an image",
        "/zero_shot",
        lambda f: (handle_file(f["garbage.png"]), "a\nb"),
        r"^Image to classify: garbage\.png is not an image",
    ),
    Case(
        "clip batch: a text file",
        "/clip_batch",
        lambda f: (2, 0, [handle_file(f["notes.txt"])], "", False, 10),
        r"Invalid file type.*image",
    ),
    Case(
        "noise: t beyond the chain",
        "/noise_image",
        lambda f: ("world sample", 3, None, 5000, 0),
        r"^t: how far along the chain must be a number from 0 to 999; got 5000",
    ),
    Case(
        "strength NaN",
        "/strength",
        lambda f: (float("nan"), 10),
        r"^strength must be a number from 0 to 1; got nan",
        raw=True,
    ),
    Case("markov: unknown start", "/markov", lambda f: (5, 10, "snowy", 0), r"^Day 0: .*'snowy'.*not in the list"),
    Case(
        "steer: a word not in the prompt",
        "/steer_reweight",
        lambda f: (PROMPT, "zebra", 2, 0, 2, 7.5),
        r"'zebra' is not a word of the prompt",
    ),
    Case(
        "sweep: NaN scale",
        "/guidance_sweep",
        lambda f: (PROMPT, 0, 2, "nan"),
        r"^guidance scales must be 1 to 8 numbers from 0 to 30, separated by commas \(e\.g\. 1, 3, 7\.5\); 'nan' is not a number from 0 to 30\.$",
    ),
]


def test_the_cases_cover_every_family(client):
    """CASES covers every endpoint family and holds at least 25 distinct inputs that must be refused."""
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    used = {case.api for case in CASES}
    assert used <= names
    assert {"/generate", "/upscale", "/stylize", "/inpaint", "/outpaint", "/tokenize", "/noise_image"} <= used
    assert len({case.name for case in CASES if case.error}) >= 25


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, served, client, files):
    args = case.args(files)
    if case.raw:
        answer = _raw_call(served.url, case.api, list(args))
        assert answer["event"] == "error"
        message = answer["data"]["error"]
        assert message is not None, "a generic 'the app raised an exception' instead of a message"
        assert re.search(case.error, message), message
    elif case.error is not None:
        with pytest.raises(AppError) as info:
            client.predict(*args, api_name=case.api)
        message = str(info.value)
        assert re.search(case.error, message), message
        assert "/tmp/" not in message and "Traceback" not in message  # no server paths or internals
        assert len(message) < 500  # a message a person reads, not a dump
    else:
        case.check(client.predict(*args, api_name=case.api), files)
    _still_serving(client)


def test_every_family_serves_after_bad_input(client, files):
    """After the bad inputs above, one valid request per endpoint family succeeds."""
    with pytest.raises(AppError):
        client.predict(*_gen(""), api_name="/generate")
    assert client.predict(*_gen(), api_name="/generate")[1].startswith("Done: 2 steps")
    steered = client.predict(PROMPT, "red", 2, 0, 2, 7.5, api_name="/steer_reweight")
    assert "Edited" in steered[2]
    strip, schedule, text = client.predict("world sample", 3, None, 300, 0, api_name="/noise_image")
    assert "t = 300" in text
    low, bicubic, out, *_ = client.predict(handle_file(files["image.png"]), PROMPT, 20, 0, 1, api_name="/upscale")
    assert Image.open(out).size == (64, 64)
    content, out, note, *_ = client.predict(
        handle_file(files["image.png"]), ["striped"], PROMPT, 0.6, 0, 2, api_name="/stylize"
    )
    assert "1 of 2 sampler steps run" in note
    out = client.predict(_editor(files, "mask_rgba.png"), PROMPT, "unet", 0, 1, api_name="/inpaint")
    assert "1024 pixels filled" in out[-1]
    out = client.predict(*_outpaint(files, "image.png"), api_name="/outpaint")
    assert Image.open(out[1]).size == (80, 64)


def test_upload_over_the_size_limit_is_refused(served, tmp_path):
    """max_file_size comes from demo.app.launch_options(): the server answers 413, gradio_client refuses to send."""
    from demo.common import MAX_FILE_SIZE

    limit = int(MAX_FILE_SIZE.removesuffix("mb")) * 1024 * 1024
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * limit)  # just over the limit
    with httpx.Client(base_url=served.url, timeout=60) as web:
        with big.open("rb") as fh:
            answer = web.post("gradio_api/upload", files={"files": ("big.png", fh, "image/png")})
        small = web.post("gradio_api/upload", files={"files": ("small.txt", b"hello", "text/plain")})
    assert answer.status_code == 413 and "maximum allowed size" in answer.text
    assert small.status_code == 200  # the route itself works
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {limit} bytes"):
        Client(served.url, verbose=False).predict(handle_file(str(big)), "a\nb", api_name="/zero_shot")


# -- stop and cancel ----------------------------------------------------------------------------------------------------
def _steps_done(status: str) -> int:
    return int(re.match(r"Done: (\d+) steps", status).group(1))


def test_stop_ends_the_run_within_one_step(served):
    client = Client(served.url, verbose=False)
    job = client.submit(*_gen(steps=150, h=64, w=64), api_name="/generate")
    at_stop = None
    for count, _ in enumerate(job, start=1):
        if count == 3 and at_stop is None:
            answer = client.predict(api_name="/stop")
            at_stop = int(re.search(r"\(step (\d+) of 150\)", answer).group(1))  # the step running when asked
    status = job.outputs()[-1][1]
    done = _steps_done(status)
    assert "Stopped early" in status
    assert done <= at_stop < 150  # that step finished, no further one started
    assert len(job.outputs()) <= done + 1  # one preview per step that ran, then the final outputs
    assert client.predict(*_gen(), api_name="/generate")[1].startswith("Done: 2 steps")
    assert client.predict(api_name="/stop") == "Nothing is running."


def test_cancel_stops_the_pipeline_within_one_step(served):
    """job.cancel() (the client going away) stops the worker too: it does not run the remaining steps."""
    client = Client(served.url, verbose=False)
    job = client.submit(*_gen(steps=150, h=64, w=64), api_name="/generate")
    for count, _ in enumerate(job, start=1):
        if count == 3:
            break
    session = client.session_hash
    tab = served.attend_tab()
    job.cancel()
    run = tab.progress(session)  # the run's live counter, kept after a stop or cancel
    assert run is not None, "the cancelled run was forgotten before it stopped"
    at_cancel = run.steps_done
    assert served.engine.lock.acquire(timeout=60)  # the worker holds it until the pipeline returns
    served.engine.lock.release()
    assert run.steps_done <= at_cancel + 1 < 150
    assert client.predict(*_gen(), api_name="/generate")[1].startswith("Done: 2 steps")


# -- many clients -------------------------------------------------------------------------------------------------------
COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star")
SCHEDULERS = ("default", "DDIM", "Euler", "DPM-Solver++", "UniPC")


def test_twenty_clients_at_once_get_their_own_results(served):
    """20 sessions submit different prompts, seeds and schedulers together; each gets exactly its own picture."""
    from demo.app import QUEUE_MAX_SIZE
    from explain.engine.requests import GenerationRequest
    from explain.engine.session import generate

    assert CONCURRENT_CLIENTS < QUEUE_MAX_SIZE  # so every one must be served, none told "queue full"
    requests = [
        (f"a {COLORS[i % 5]} {SHAPES[i % 4]} on the left", 100 + i, SCHEDULERS[i % 5])
        for i in range(CONCURRENT_CLIENTS)
    ]
    clients = [Client(served.url, verbose=False) for _ in requests]  # one client = one browser session
    start = threading.Barrier(CONCURRENT_CLIENTS, timeout=CLIENT_TIMEOUT_S)  # a failed thread breaks it: no hang

    def run(client, request):
        prompt, seed, scheduler = request
        try:
            start.wait()
        except threading.BrokenBarrierError:
            raise AssertionError("another client failed before all had started") from None
        job = client.submit(*_gen(prompt, seed=seed, scheduler=scheduler), api_name="/generate")
        image, status, gallery, *_ = job.result(timeout=CLIENT_TIMEOUT_S)
        maps = client.submit(0, True, [], [], [], "minmax", 0, True, api_name="/maps")  # this session's result
        explored = maps.result(timeout=CLIENT_TIMEOUT_S)[0]
        return np.asarray(Image.open(image).convert("RGB")), status, _captions(gallery), _captions(explored)

    with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
        results = list(pool.map(run, clients, requests))
    pipe = served.engine.pipeline()
    for (prompt, seed, _), (_, status, captions, explored) in zip(requests, results, strict=True):
        assert re.match(rf"Done: 2 steps with \w+ in .* \(seed {seed}, guidance 7\.5\)", status), status
        color, shape = prompt.split()[1:3]
        assert captions == explored == [f"“{color}”", f"“{shape}”", "“left”"]
    references = [
        np.asarray(
            generate(
                pipe,
                GenerationRequest(p, seed=s, steps=2, scheduler=k, height=SIZE, width=SIZE),
                lock=served.engine.lock,
            ).image.convert("RGB"),
            np.int16,
        )
        for p, s, k in requests
    ]
    for i, (image, *_rest) in enumerate(results):
        errors = [np.abs(ref - image).mean() for ref in references]
        assert errors[i] < 1.0, errors[i]  # the same picture as a run on its own
        assert int(np.argmin(errors)) == i  # and not another session's


# -- a long class: memory and disk stay flat ---------------------------------------------------------------------------
def _cache_files(served: Served) -> set[Path]:
    """Files in the app's Gradio cache, without those Gradio keeps for good (component defaults, example inputs)."""
    kept = {Path(p) for block in served.demo.blocks.values() for p in getattr(block, "keep_in_cache", ())}
    found = {Path(root) / name for root, _, names in os.walk(served.cache_dir) for name in names}
    return {p for p in found if not p.name.startswith(".")} - kept  # not Gradio's half-written ".name.xxxx" copies


def test_hundred_runs_keep_memory_and_disk_flat(served):
    from demo.common import EXPORT_DIRS_KEPT, export_root
    from explain.engine.session import GenerationResult

    client = Client(served.url, verbose=False, download_files=False)
    process = psutil.Process()
    rss, files, times = {}, {}, {}
    for i in range(1, SEQUENTIAL_RUNS + 1):
        status = client.predict(*_gen(f"a red circle number {i}", seed=i, steps=1), api_name="/generate")[1]
        assert status.startswith("Done: 1 steps"), status
        if i in (20, SEQUENTIAL_RUNS):
            gc.collect()
            rss[i], files[i], times[i] = process.memory_info().rss, _cache_files(served), time.monotonic()
    every, age = CACHE_POLICY
    assert times[SEQUENTIAL_RUNS] - times[20] > every + age  # long enough for the policy to act
    growth = (rss[SEQUENTIAL_RUNS] - rss[20]) / rss[20]
    assert growth < 0.10, f"resident memory grew {growth:.1%} from run 20 to run {SEQUENTIAL_RUNS}"
    assert len(files[20]) >= 20, "the cache folder is not where the app writes"
    assert not files[20] & files[SEQUENTIAL_RUNS]  # every file of run 20's time was deleted by run 100
    now = time.time()
    ages = [now - p.stat().st_ctime for p in _cache_files(served) if p.exists()]
    assert max(ages) < age + every + 10, max(ages)  # nothing older than the policy allows (plus a busy-CPU margin)
    assert len([p for p in export_root().iterdir() if p.is_dir()]) <= EXPORT_DIRS_KEPT
    alive = sum(isinstance(o, GenerationResult) for o in gc.get_objects())
    assert alive <= 2 * CONCURRENT_CLIENTS + 10  # one per session (gr.State) and a few recent presets, not one per run


# -- security -----------------------------------------------------------------------------------------------------------
def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_file_route_serves_only_the_apps_own_files(served, tmp_path):
    import tempfile

    import app as app_module

    secret = Path(tempfile.gettempdir()) / f"sd-explorer-secret-{os.getpid()}.txt"
    secret.write_text("TOP SECRET")
    weights = next(EMBEDDED_MODEL_DIR.rglob("*.safetensors"))
    cache = served.cache_dir
    try:
        forbidden = [
            "/etc/passwd",
            "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            f"{cache}/..%2F..%2F..%2Fetc%2Fpasswd",
            f"{cache}/../{secret.name}",
            str(secret),
            str(Path(app_module.__file__).resolve()),
            "app.py",  # relative to the server's working directory
            str(weights),
            str(weights.relative_to(Path.cwd())) if weights.is_relative_to(Path.cwd()) else str(weights),
        ]
        for path in forbidden:
            status, body = _raw_get(served.url, f"/gradio_api/file={path}")
            assert status == 403, (path, status)
            assert b"TOP SECRET" not in body and b"root:" not in body and b"import" not in body
            assert json.loads(body)["detail"].startswith("File not allowed")
        status, body = _raw_get(served.url, "/gradio_api/file=../../../../etc/passwd")  # unencoded traversal
        assert status in (403, 404) and b"root:" not in body
        # the positive control: a file the app produced is served
        image = Client(served.url, verbose=False, download_files=False).predict(*_gen(steps=1), api_name="/generate")[
            0
        ]
        status, body = _raw_get(served.url, urlsplit(image["url"]).path)
        assert status == 200 and body.startswith(b"\x89PNG")
    finally:
        secret.unlink()


def test_weights_load_from_safetensors_only_and_never_run_custom_code(tmp_path):
    from tiny_pipelines import build_sd1

    from explain.diffusion.loading import ModelLoadError, load_pipeline

    pipe = build_sd1(tmp_path / "work")
    pipe.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    with pytest.raises(ModelLoadError, match=r"only pickle weights in (unet|vae)/ .*safetensors only"):
        load_pipeline(str(tmp_path / "pickle"), device="cpu")

    custom = tmp_path / "custom"
    pipe.save_pretrained(custom)
    marker = tmp_path / "custom-code-ran"
    (custom / "evil_unet.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom diffusers import UNet2DConditionModel as EvilUNet\n"
    )
    index = json.loads((custom / "model_index.json").read_text())
    (custom / "model_index.json").write_text(json.dumps(index | {"unet": ["evil_unet", "EvilUNet"]}))
    with pytest.raises(ModelLoadError, match="never loads remote or custom code"):
        load_pipeline(str(custom), device="cpu")
    assert not marker.exists()
    (custom / "model_index.json").write_text(json.dumps(index))
    assert type(load_pipeline(str(custom), device="cpu")).__name__ == "StableDiffusionPipeline"  # the control

    root = Path(__file__).resolve().parents[1]
    sources = [p for d in ("explain", "demo") for p in (root / d).rglob("*.py")] + [root / "app.py"]
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert not re.search(r"trust_remote_code\s*=\s*True|custom_pipeline\s*=", text), source


def test_share_without_auth_warns_and_bad_setups_exit_before_any_tunnel(tmp_path, capsys):
    import app as app_module

    def warning(*argv: str) -> str | None:
        return app_module.share_warning(app_module.parse_args(list(argv)))

    assert "--share without --auth" in warning("--share")
    assert warning("--share", "--auth", "teacher:secret") is None
    assert warning() is None
    assert isinstance(app_module.parse_args(["--share"]), argparse.Namespace)
    # a full main() that stops at the model check, before demo.launch could open a tunnel
    assert app_module.main(["--share", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "warning: --share without --auth" in err and "error:" in err and "neither an existing directory" in err
