"""Every named endpoint x every class of bad value, sent as a raw API client sends it; derived from the app's own API
description (``/gradio_api/info`` through gradio_client, and the config's component ranges), so a new endpoint is
covered without new test code.

Each case changes one field of a valid request (the endpoint's own defaults, a small uploaded image for file fields)
to one bad value: None, NaN, ±inf, -1, 1e30, a value of the wrong JSON type, a 10 000-character text, a file that is
not an image, a decompression bomb (20000 x 20000, 60 kB on disk), a server path and a URL in a file field; and each
endpoint gets one value too few and one too many. The answer must be an error whose message names the field as the
UI labels it (or, for a wrong count, says how many inputs the endpoint takes), holds no internal exception text,
and the app must keep serving.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.engine.requests import MAX_SEED
from explain.usecases import task_models_available

pytestmark = pytest.mark.skipif(
    not ((EMBEDDED_MODEL_DIR / "model_index.json").is_file() and task_models_available()),
    reason="embedded model or models/tiny-shapes-tasks missing",
)

BOMB_SIDE = 20_000
# upload limits of the served app, small enough to fill in a test (the app's own: demo.app.UPLOAD_LIMITS)
SHARE, TOTAL, MIN_AGE = 3 * 2**20, 8 * 2**20, 3.0
UPLOADED: list[str] = []  # every file this module uploaded, oldest first
GRACE = 1.0  # seconds a closed page's session is kept (the app's own: demo.app.MEMORY)
SESSION = "api-sweep"  # one session for the whole sweep: it holds a generation, so /maps, /qkv, /export have one
LONG_TEXT = ("a big red circle on the left and " * 400)[:10_000]
FILE_COMPONENTS = {"image", "imageeditor", "imagemask", "sketchpad", "paint", "file"}
INTERNAL = re.compile(  # text that comes from an exception, not from a message written for people
    r"Traceback|Error:|Exception|not supported between|unpacking|object has no attribute|NoneType|"
    r"is not subscriptable|invalid literal|/tmp/|site-packages|\.py\b|could not convert|upstream Gradio app"
)
# What every seed field's message says about the range (explain.engine.requests.MAX_SEED, /generate's library check).
SEED_RANGE = f"0 to {MAX_SEED}"
# Fields whose message is not yet right: (endpoint, field label, value class, or "*" for every class of the field) ->
# what the app answers today. test_known_library_gaps_are_still_open keeps this list honest: an entry that is fixed
# fails there and must be removed.
KNOWN_LIBRARY_GAPS: dict[tuple[str, str, str], str] = {}
# Views whose job is to show what a too-long prompt loses answer with the cut, by design: what shows it.
SHOWS_THE_CUT = {
    ("/tokenize", "Prompt"): 'class=\\"slot cut\\"',
    ("/text_states", "Prompt for the U-Net"): "all 77 rows",
}


# -- the served app -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        env.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
        from demo.app import launch_options, serve_local
        from demo.cache import MemoryPolicy, UploadLimits

        uploads, memory = UploadLimits(SHARE, TOTAL, min_age=MIN_AGE), MemoryPolicy(every=1, closed_grace=GRACE)
        # files stay while the sweep runs (a slow machine can take longer than the hour after which they go)
        demo, url = serve_local(options=launch_options(delete_cache=None, uploads=uploads, memory=memory))
        try:
            yield url
        finally:
            demo.close()


@pytest.fixture(scope="module")
def web(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served, timeout=120) as client:
        yield client


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels: tens of kB on disk, ``side``² pixels decoded."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


def _post_upload(web: httpx.Client, name: str, data: bytes, client: str = "") -> httpx.Response:
    """POST one file to /gradio_api/upload, as ``client`` (an X-Forwarded-For address; "" = this machine)."""
    headers = {"x-forwarded-for": client} if client else {}
    answer = web.post("gradio_api/upload", files={"files": (name, data)}, headers=headers)
    if answer.status_code == 200:
        UPLOADED.extend(answer.json())
    return answer


def _upload(web: httpx.Client, path: Path) -> dict:
    answer = _post_upload(web, path.name, path.read_bytes())
    answer.raise_for_status()
    return {"path": answer.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def uploads(web, tmp_path_factory) -> dict[str, dict]:
    """The files the sweep sends, uploaded to the app as a raw client does (POST /gradio_api/upload)."""
    folder = tmp_path_factory.mktemp("sweep-files")
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 8:40] = (220, 40, 40)
    Image.fromarray(image).save(folder / "scene.png")
    mask = np.zeros((64, 64, 4), np.uint8)
    mask[16:48, 32:64] = 255  # a white stroke on a transparent layer, as the brush paints
    Image.fromarray(mask).save(folder / "stroke.png")
    (folder / "notes.png").write_bytes(b"this is text, not a PNG\n" * 40)
    _bomb(folder / "bomb.png")
    assert (folder / "bomb.png").stat().st_size < 200_000
    with pytest.raises(Image.DecompressionBombError, match=f"{BOMB_SIDE**2} pixels"):  # a real bomb to PIL
        Image.open(folder / "bomb.png")
    return {name: _upload(web, folder / f"{name}.png") for name in ("scene", "stroke", "notes", "bomb")}


def _call(web: httpx.Client, api: str, data: list, session: str = SESSION) -> tuple[str, object]:
    """POST ``data`` to /gradio_api/call``api`` in ``session`` (NaN and ±inf written as JSON literals, as Python's
    JSON writes them); returns the last event's kind (``complete`` or ``error``) and its data (the outputs or the
    error message)."""
    body = json.dumps({"data": data, "session_hash": session})
    answer = web.post(f"gradio_api/call{api}", content=body, headers={"content-type": "application/json"})
    answer.raise_for_status()
    stream = web.get(f"gradio_api/call{api}/{answer.json()['event_id']}").text
    kind = re.findall(r"^event: (\w+)", stream, re.M)[-1]
    payload = json.loads(re.findall(r"^data: (.*)$", stream, re.M)[-1])
    return kind, payload


def _still_serving(web: httpx.Client) -> None:
    kind, data = _call(web, "/tokenize", ["still serving"])
    assert kind == "complete" and "slots used" in data[2], data


# -- the cases, from the API description ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    endpoint: str
    index: int
    id: int  # the component's id in the config
    label: str
    component: str  # Gradio's name, lower case: slider, number, textbox, image, ...
    props: dict  # the component's config (minimum, maximum, choices, value, ...)

    @property
    def is_file(self) -> bool:
        return self.component in FILE_COMPONENTS


@dataclass(frozen=True)
class Case:
    endpoint: str
    field: Field | None  # None: the argument count is wrong
    kind: str
    data: list

    @property
    def id(self) -> str:
        return f"{self.endpoint}[{self.field.label if self.field else 'count'}]:{self.kind}"


@dataclass(frozen=True)
class Endpoint:
    name: str
    fields: list[Field]
    states: int  # State inputs: the server fills them in, an API caller sends nothing for them
    base: list  # a valid request: the endpoint's defaults, uploaded files for file fields


def _endpoints(client: Client, uploads: dict[str, dict]) -> list[Endpoint]:
    """Every named endpoint, its parameters with their component's config, and a valid request."""
    components = {c["id"]: c for c in client.config["components"]}
    deps = {d["api_name"]: d for d in client.config["dependencies"] if d.get("api_name")}
    endpoints = []
    for name, info in client.view_api(print_info=False, return_format="dict")["named_endpoints"].items():
        inputs = deps[name.lstrip("/")]["inputs"]
        ids = [i for i in inputs if components[i]["type"] != "state"]
        assert len(ids) == len(info["parameters"]), name
        fields = [
            Field(name, n, i, p["label"], p["component"].lower(), components[i].get("props", {}))
            for n, (p, i) in enumerate(zip(info["parameters"], ids, strict=True))
        ]
        base = [_valid(f, p, uploads) for f, p in zip(fields, info["parameters"], strict=True)]
        endpoints.append(Endpoint(name, fields, len(inputs) - len(ids), base))
    return endpoints


def _valid(field: Field, parameter: dict, uploads: dict[str, dict]):
    """A value the field takes: its default; the uploaded scene (and a brush stroke) for file fields."""
    if parameter["parameter_has_default"]:
        default = parameter["parameter_default"]
    else:  # Gradio's example ("Hello!!" for a text) unless the field can stay empty
        default = "" if field.component == "textbox" else parameter["example_input"]
    if not field.is_file:
        return default
    if field.component in {"imageeditor", "imagemask", "sketchpad", "paint"}:
        return {"background": uploads["scene"], "layers": [uploads["stroke"]], "composite": None, "id": None}
    if field.props.get("file_count", "single") != "single":
        return []  # a list of uploads may be empty
    return None if parameter["parameter_has_default"] and default is None else uploads["scene"]


def _wrong_type(field: Field):
    """A value of another JSON type than the field takes."""
    if field.component in {"slider", "number"}:
        return "five"
    if field.component in {"textbox", "radio", "dropdown"}:
        return ["a", "list"] if field.component != "dropdown" or not field.props.get("multiselect") else 5
    if field.component in {"checkbox"}:
        return "yes"
    if field.component in {"checkboxgroup"}:
        return 3
    return 12345  # files


def _bad_values(field: Field, uploads: dict[str, dict]) -> dict[str, object]:
    def as_file(value):  # a file in the shape the field takes (inside an editor, in a list)
        if field.component in {"imageeditor", "imagemask", "sketchpad", "paint"}:
            return {"background": value, "layers": [], "composite": None, "id": None}
        return [value] if field.props.get("file_count", "single") != "single" else value

    values = {
        "None": None,
        "NaN": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "-1": -1,
        "1e30": 1e30,
        "wrong type": _wrong_type(field),
        "10k text": LONG_TEXT,
    }
    if field.is_file:
        values |= {
            "non-image file": as_file(uploads["notes"]),
            "bomb": as_file(uploads["bomb"]),
            "server path": as_file({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}),
            "URL": as_file({"path": "http://127.0.0.1:9/x.png", "meta": {"_type": "gradio.FileData"}}),
            "plain string": "/etc/passwd",
        }
    else:
        values["a file"] = uploads["scene"]
    return values


def _must_refuse(field: Field, kind: str, value) -> bool:
    """Whether ``value`` is outside what ``field`` takes (some classes are fine for some fields: -1 where the
    minimum is negative, None for an optional upload)."""
    if kind == "None":
        return field.props.get("value") is not None or field.component in {"slider", "number"}
    if kind == "-1" and field.component in {"slider", "number"}:
        minimum = field.props.get("minimum")
        return minimum is not None and minimum > -1
    return True


def _cases(endpoints: list[Endpoint], uploads: dict[str, dict]) -> list[Case]:
    cases = []
    for endpoint in endpoints:
        name, base = endpoint.name, endpoint.base
        # one more value than the endpoint takes; with State inputs, more still: n + states values is what
        # gradio_client sends (a None in each State's place), which the server cannot tell from one too many
        cases.append(Case(name, None, "one too many", [*base, *[1] * (1 + endpoint.states)]))
        if base:
            cases.append(Case(name, None, "one too few", base[:-1]))
        for field in endpoint.fields:
            for kind, value in _bad_values(field, uploads).items():
                if _must_refuse(field, kind, value):
                    cases.append(Case(name, field, kind, [*base[: field.index], value, *base[field.index + 1 :]]))
    return cases


def _names_field(message: str, field: Field) -> bool:
    """The message names the field: its label, or the label's leading words as the library writes them."""
    text, label = message.lower(), field.label.lower()
    if label in text:
        return True
    head = re.split(r"[:(]", label)[0].strip()  # "t: how far along the chain" -> "t"; "seed (…)" -> "seed"
    words = [w for w in re.findall(r"[a-z0-9][a-z0-9'-]+", head) if w not in {"the", "of", "a", "to", "for"}]
    return bool(words) and all(re.search(rf"\b{re.escape(w)}", text) for w in words[-1:])


def _problem(case: Case, kind: str, payload) -> str | None:
    """What is wrong with the answer to ``case`` (None: it is right)."""
    if kind != "error":
        return f"accepted: {str(payload)[:120]}"
    message = (payload or {}).get("error") if isinstance(payload, dict) else None
    if not message:
        return "an error without a message"
    if INTERNAL.search(message):
        return f"internal text: {message[:200]}"
    if case.field is None:
        count = len(case.data)
        if not re.search(rf"takes \d+ inputs .*got {count}\b", message):
            return f"does not say how many inputs it takes: {message[:200]}"
    elif not _names_field(message, case.field):
        return f"does not name {case.field.label!r}: {message[:200]}"
    elif _is_seed(case.field) and SEED_RANGE not in message:
        return f"does not state the seed range {SEED_RANGE}: {message[:200]}"
    return None


def _is_seed(field: Field) -> bool:
    return re.search(r"\bseed\b", field.label, re.IGNORECASE) is not None


def _sweep(web: httpx.Client, cases: list[Case]) -> dict[str, str]:
    problems, last = {}, None
    for case in cases:
        kind, payload = _call(web, case.endpoint, case.data)
        problem = _problem(case, kind, payload)
        if problem:
            problems[case.id] = problem
        if case.endpoint != last:  # after each endpoint's cases, the app still answers
            _still_serving(web)
            last = case.endpoint
    return problems


@pytest.fixture(scope="module")
def endpoints(served, uploads) -> list[Endpoint]:
    return _endpoints(Client(served, verbose=False), uploads)


@pytest.fixture(scope="module")
def controls(served, web, endpoints) -> dict[str, tuple[str, object]]:
    """Each endpoint's valid request, in the sweep's session, /generate first (the others explore its result)."""
    client = Client(served, verbose=False)
    first = next(e for e in endpoints if e.name == "/generate")
    answers = {first.name: _call(web, first.name, first.base)}
    # menus filled by the generation (a gr.update with choices) take its value in the requests that follow
    outputs = next(d for d in client.config["dependencies"] if d.get("api_name") == "generate")["outputs"]
    filled = {
        i: update.get("value") or update["choices"][0][1]
        for i, update in zip(outputs, answers[first.name][1], strict=False)
        if isinstance(update, dict) and update.get("__type__") == "update" and update.get("choices")
    }
    for endpoint in endpoints:
        for field in endpoint.fields:
            if endpoint.base[field.index] is None and field.id in filled:
                endpoint.base[field.index] = filled[field.id]
        if endpoint is not first:
            answers[endpoint.name] = _call(web, endpoint.name, endpoint.base)
    return answers


@pytest.fixture(scope="module")
def sweep(web, endpoints, uploads, controls) -> tuple[list[Case], dict[str, str]]:
    cases = _cases(endpoints, uploads)
    return cases, _sweep(web, cases)


def test_every_valid_request_is_served(controls):
    """The control: the requests the sweep spoils one field at a time are answered with results."""
    failed = {name: str(data)[:200] for name, (kind, data) in controls.items() if kind != "complete"}
    assert not failed, failed


def test_the_sweep_covers_every_endpoint_and_class(sweep, endpoints):
    cases, _ = sweep
    assert {case.endpoint for case in cases} == {e.name for e in endpoints} and len(endpoints) >= 23
    kinds = {case.kind for case in cases}
    assert {"None", "NaN", "inf", "-1", "1e30", "wrong type", "10k text", "non-image file", "bomb"} <= kinds
    assert {"server path", "URL", "one too many", "one too few"} <= kinds
    assert len(cases) > 900


def test_every_bad_value_gets_a_message_that_names_the_field(sweep):
    """... and, for a seed, states its range."""
    cases, problems = sweep
    expected = {case.id for case in cases if _gap_of(case)}
    expected |= {f"{endpoint}[{label}]:10k text" for endpoint, label in SHOWS_THE_CUT}
    unexpected = {case: problem for case, problem in problems.items() if case not in expected}
    assert not unexpected, "\n".join(f"{case}: {problem}" for case, problem in sorted(unexpected.items()))


def test_no_error_lacks_a_message(sweep):
    _, problems = sweep
    silent = [case for case, problem in problems.items() if problem == "an error without a message"]
    assert not silent, silent


def _gap_of(case: Case) -> tuple[str, str, str] | None:
    """The KNOWN_LIBRARY_GAPS entry that lists ``case`` (by its value class or by "*"), if any."""
    if case.field is None:
        return None
    keys = [(case.endpoint, case.field.label, kind) for kind in (case.kind, "*")]
    return next((key for key in keys if key in KNOWN_LIBRARY_GAPS), None)


def test_known_library_gaps_are_still_open(sweep):
    """Each listed gap still answers as listed (a "*" entry: for some value class); once the message is right,
    remove it from the list."""
    cases, problems = sweep
    still_open = {_gap_of(case) for case in cases if case.id in problems}
    fixed = sorted(gap for gap in KNOWN_LIBRARY_GAPS if gap not in still_open)
    assert not fixed, f"fixed, remove from KNOWN_LIBRARY_GAPS: {fixed}"


def test_the_token_views_show_what_a_long_prompt_loses(web, endpoints):
    """/tokenize and /text_states take a 10 000-character prompt and show the 77 slots it is cut to."""
    for endpoint in endpoints:
        for field in endpoint.fields:
            if (endpoint.name, field.label) in SHOWS_THE_CUT:
                data = [*endpoint.base[: field.index], LONG_TEXT, *endpoint.base[field.index + 1 :]]
                kind, outputs = _call(web, endpoint.name, data)
                assert kind == "complete", outputs
                assert SHOWS_THE_CUT[endpoint.name, field.label] in json.dumps(outputs), endpoint.name


# -- the upload bound ---------------------------------------------------------------------------------------------------
def _noise(megabytes: float, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(int(megabytes * 2**20))  # distinct content: distinct stored files


def test_a_client_over_its_share_is_refused_then_its_oldest_upload_makes_room(web):
    first = [_post_upload(web, f"a{i}.bin", _noise(0.9, i), client="10.0.0.1") for i in range(3)]
    assert [r.status_code for r in first] == [200, 200, 200]
    refused = _post_upload(web, "a3.bin", _noise(0.9, 3), client="10.0.0.1")
    assert refused.status_code == 413
    assert re.fullmatch(
        r"Your uploads of the last 3 s take 3 MB; each client may keep 3 MB\. Wait a minute.*", refused.text
    )
    other = _post_upload(web, "b0.bin", _noise(0.9, 10), client="10.0.0.2")  # another client still has its share
    assert other.status_code == 200
    mine = [r.json()[0] for r in first]
    assert all(Path(p).is_file() for p in mine)  # a refusal deletes nothing that is still new
    time.sleep(MIN_AGE + 0.5)
    again = _post_upload(web, "a4.bin", _noise(0.9, 4), client="10.0.0.1")
    assert again.status_code == 200
    assert [Path(p).is_file() for p in mine] == [False, True, True]  # the oldest went first
    assert Path(other.json()[0]).is_file()
    kind, answer = _call(web, "/zero_shot", [{"path": mine[0], "meta": {"_type": "gradio.FileData"}}, "a\nb"])
    assert kind == "error" and answer["error"].startswith("Image to classify: a0.bin is no longer on the server")


def test_the_total_bound_deletes_the_oldest_uploads_of_any_client(web):
    time.sleep(MIN_AGE + 0.5)  # everything uploaded so far may now make room
    for i in range(8):  # 8 new clients x 0.9 MB, on top of what the other tests left: more than the 8 MB in all
        assert _post_upload(web, f"c{i}.bin", _noise(0.9, 100 + i), client=f"10.0.1.{i}").status_code == 200
    kept = [Path(p).is_file() for p in UPLOADED]
    assert not all(kept) and kept == sorted(kept)  # deleted ones first: the oldest went first
    assert sum(Path(p).stat().st_size for p in UPLOADED if Path(p).is_file()) <= TOTAL
    full = _post_upload(web, "d.bin", _noise(0.9, 200), client="10.0.2.1")  # all that is left is new
    assert full.status_code == 413 and full.text.startswith("The app's room for uploads (8 MB) is full")


# -- sessions that left -------------------------------------------------------------------------------------------------
def test_the_state_of_a_session_whose_page_closed_is_freed(web):
    session, other = "closes-its-page", "stays"
    maps = [0, True, [], [], [], "softmax", 0.4, True, "cross"]
    for name in (session, other):
        assert _call(web, "/generate", ["a red circle", "", 0, 1, 7.5, "default", 32, 32], name)[0] == "complete"
    with web.stream("GET", f"gradio_api/heartbeat/{session}") as beat:  # the page is open ...
        assert next(beat.iter_lines()).startswith("data: ALIVE")
        assert _call(web, "/maps", maps, session)[0] == "complete"  # and its result is there
    time.sleep(GRACE + 3)  # ... then closed: after the grace and a housekeeping round its state is gone
    kind, answer = _call(web, "/maps", maps, session)
    assert kind == "error" and answer["error"].startswith("Generate an image first"), answer
    assert _call(web, "/maps", maps, other)[0] == "complete"  # a session that did not close keeps its result
