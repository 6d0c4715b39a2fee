"""The Gradio boundary: every request to every event is checked here before Gradio or a handler touches it.

A raw API client can send anything a JSON body holds: ``None`` or a list where a number belongs, NaN and ±inf
(Python's JSON reader accepts them), a server path or a URL where an uploaded file belongs, a 20000 x 20000 PNG
that is small on disk, too few or too many values. Gradio's own preprocessing fails on most of these with an
exception whose text the client never sees ("the upstream Gradio app has raised an exception"). :func:`guard`
installs two scoped hooks on one ``gr.Blocks`` instance (Gradio has no earlier extension point; a component or
Blocks subclass would change every instance and make Gradio write ``.pyi`` stubs):

- the Blocks' ``process_api`` checks the number of values and each value against its component, as the
  session sees it (a ``gr.update`` may have changed a slider's maximum or a dropdown's choices), and refuses with a
  ``gr.Error`` that names the field by its label and says what is allowed. Anything else that escapes a request
  becomes a short message without internals (the traceback goes to the server log);
- each input component's ``preprocess`` puts the field's label in front of Gradio's own errors and of decoding
  errors of images whose header was fine but whose data is not.

The library (explain/) checks what only it can know (77 token slots, a seed the generator accepts, whole steps);
these checks are about the values themselves and hold for every endpoint alike, a new one included.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils
from gradio_client import utils as client_utils

from explain.engine.requests import MAX_PROMPT_CHARS

__all__ = [
    "guard",
    "check_number",
    "check_image_file",
    "MAX_UPLOAD_SIDE",
    "MAX_UPLOAD_PIXELS",
    "MAX_TEXT_CHARS",
    "TITLE",
]

log = logging.getLogger(__name__)

TITLE = "Please check the input"
MAX_UPLOAD_SIDE = 4096  # pixels, longest side of an uploaded image (read from the header, before decoding)
MAX_UPLOAD_PIXELS = 4096 * 4096  # pixels of an uploaded image: the app's Image.MAX_IMAGE_PIXELS, checked first
# Characters of any text field: a bound against oversized requests, above the library's own prompt limit so that
# prompts get the library's message (its 77-token rule, or "The prompt is N characters long; ... Shorten it.").
MAX_TEXT_CHARS = 2 * MAX_PROMPT_CHARS
MAX_WHOLE = 2**53  # numbers without a maximum stay within ±2^53: beyond it JSON (a browser) cannot hold whole numbers
FILE_COMPONENTS = (gr.Image, gr.ImageEditor, gr.File)
CHOICE_COMPONENTS = (gr.Dropdown, gr.Radio, gr.CheckboxGroup)


def _refuse(message: str) -> gr.Error:
    return gr.Error(message, title=TITLE)


def _label(component) -> str:
    return getattr(component, "label", None) or component.get_block_name()


def _shown(value) -> str:
    """A value as a message shows it: short, and never a server path a client sent back."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return f"an object with keys {', '.join(map(str, list(value)[:5]))}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} values"
    if isinstance(value, float) and math.isfinite(value) and abs(value) > MAX_WHOLE:
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... (a {type(value).__name__}, {len(text)} characters)"


# -- numbers ------------------------------------------------------------------------------------------------------------
def _number(value: float) -> str:
    """A number as a message writes it: whole numbers in full (a seed's 4294967295, not 4.29497e+09)."""
    if abs(value) <= MAX_WHOLE and float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def check_number(value, field: str, minimum: float | None, maximum: float | None) -> None:
    """A gr.Error naming ``field`` and its range unless ``value`` is a finite number within it.

    Gradio's own check says "Value 0 is less than minimum value 1." without the field, lets NaN through and fails on
    ``None`` with a TypeError.
    """
    low = "-∞" if minimum is None else _number(minimum)
    high = "∞" if maximum is None else _number(maximum)
    allowed = f"{field} must be a number from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"{allowed}; got {_shown(value)}.")
    if abs(value) > MAX_WHOLE and (minimum is None or maximum is None):
        raise _refuse(f"{allowed}; got {value:g} (beyond ±2^53, the largest whole number JSON carries exactly).")
    if minimum is not None and value < minimum:
        raise _refuse(f"{allowed}; got {_number(value)} (less than minimum value {low}).")
    if maximum is not None and value > maximum:
        raise _refuse(f"{allowed}; got {_number(value)} (greater than maximum value {high}).")


# -- files --------------------------------------------------------------------------------------------------------------
def check_image_file(path: str, name: str, field: str) -> None:
    """A gr.Error naming ``field`` unless ``path`` is an image of at most MAX_UPLOAD_SIDE pixels a side and
    MAX_UPLOAD_PIXELS pixels.

    Only the header is read, so a huge, bomb-like or broken file is refused before anything decodes it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
    except Image.DecompressionBombError as err:  # PIL's own limit (2 x its MAX_IMAGE_PIXELS) hit at open
        raise _refuse(
            f"{field}: {name} has far more pixels than the {MAX_UPLOAD_PIXELS} allowed "
            f"({MAX_UPLOAD_SIDE} x {MAX_UPLOAD_SIDE})."
        ) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise _refuse(
            f"{field}: {name} is not an image this app can read ({type(err).__name__}); upload a PNG, JPEG, WebP, "
            "BMP or GIF."
        ) from err
    if max(size) > MAX_UPLOAD_SIDE or size[0] * size[1] > MAX_UPLOAD_PIXELS:
        raise _refuse(
            f"{field}: {name} is {size[0]} x {size[1]} pixels; the longest side allowed is {MAX_UPLOAD_SIDE} and "
            f"at most {MAX_UPLOAD_PIXELS} pixels in all."
        )


def _file_dicts(component, value, field: str) -> list[dict]:
    """The file objects in a file component's payload (refusing shapes the component cannot take)."""
    expected = (
        f"{field}: expected an uploaded file ({{'path': ..., 'meta': {{'_type': 'gradio.FileData'}}}}, as "
        "gradio_client.handle_file sends it)"
    )
    if isinstance(component, gr.ImageEditor):
        if not isinstance(value, dict) or not set(value) <= {"background", "layers", "composite", "id"}:
            raise _refuse(f"{expected} in {{'background', 'layers', 'composite'}}; got {_shown(value)}.")
        layers = value.get("layers") or []
        if not isinstance(layers, list):
            raise _refuse(f"{field}: 'layers' must be a list of uploaded files; got {_shown(layers)}.")
        files = [value.get("background"), value.get("composite"), *layers]
    elif isinstance(component, gr.File) and component.file_count != "single":
        if not isinstance(value, list):
            raise _refuse(f"{field}: expected a list of uploaded files; got {_shown(value)}.")
        files = value
    else:
        files = [value]
    for file in files:
        if file is not None and not (isinstance(file, dict) and isinstance(file.get("path"), str) and file["path"]):
            raise _refuse(f"{expected}; got {_shown(file)}.")
    return [f for f in files if f is not None]


def _wants_images(component) -> bool:
    if isinstance(component, gr.Image | gr.ImageEditor):
        return True
    types = getattr(component, "file_types", None) or []
    return bool(types) and all(t == "image" or t.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"} for t in types)


def _check_files(component, value, field: str, uploaded_only: bool) -> None:
    for file in _file_dicts(component, value, field):
        path = file["path"]
        name = Path(file.get("orig_name") or path).name
        if client_utils.is_http_url_like(path):
            raise _refuse(f"{field}: links are not fetched; upload the file itself (got {_shown(path)}).")
        if uploaded_only and not gradio_utils.is_in_or_equal(path, gradio_utils.get_upload_folder()):
            raise _refuse(f"{field}: {name} was not uploaded to this app; upload the file first.")
        if not Path(path).is_file():
            raise _refuse(
                f"{field}: {name} is no longer on the server (uploads are deleted after a while); upload it again."
            )
        types = getattr(component, "file_types", None)
        if types and not client_utils.is_valid_file(path, types):
            raise _refuse(f"{field}: Invalid file type: {name} is not one of {', '.join(types)}.")
        if _wants_images(component):
            check_image_file(path, name, field)


# -- one value against its component ------------------------------------------------------------------------------------
def _choice_values(component) -> list:
    return [value for _, value in component.choices]


def _check_choices(component, value, field: str) -> None:
    choices = _choice_values(component)
    allowed = ", ".join(repr(c) for c in choices[:12]) + (" …" if len(choices) > 12 else "")
    many = isinstance(component, gr.CheckboxGroup) or getattr(component, "multiselect", False)
    if many:
        if not isinstance(value, list):
            raise _refuse(f"{field}: expected a list of choices from {allowed or 'none yet'}; got {_shown(value)}.")
        values = value
    else:
        values = [value]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _refuse(f"{field}: expected one of {allowed or 'none yet'}; got {_shown(item)}.")
        if (isinstance(item, float) and not math.isfinite(item)) or (
            isinstance(item, str) and len(item) > MAX_TEXT_CHARS
        ):
            raise _refuse(f"{field}: {_shown(item)} is not in the list of choices ({allowed or 'none yet'}).")
        if not getattr(component, "allow_custom_value", False) and item not in choices:
            raise _refuse(f"{field}: {_shown(item)} is not in the list of choices ({allowed or 'none yet'}).")


def check_value(component, value, uploaded_only: bool = True, optional: bool | None = None) -> None:
    """A gr.Error naming the component's field unless ``value`` is a payload it takes.

    ``None`` is taken only where the component starts empty in the app as built (an optional upload, a menu filled
    after a generation): ``optional``, by default whether ``component.value`` is None. Numbers never take it.
    ``uploaded_only``: files must have been uploaded to this app (False for calls the server makes itself).
    """
    field = _label(component)
    optional = getattr(component, "value", None) is None if optional is None else optional
    if isinstance(component, gr.Slider | gr.Number):
        check_number(value, field, component.minimum, component.maximum)
    elif value is None:
        if not optional:
            raise _refuse(f"{field}: a value is required; got nothing (null).")
    elif isinstance(component, gr.Textbox):
        if not isinstance(value, str):
            raise _refuse(f"{field}: expected text (a string); got {_shown(value)}.")
        limit = getattr(component, "max_length", None) or MAX_TEXT_CHARS
        if len(value) > limit:
            raise _refuse(f"{field}: the text is {len(value)} characters long; at most {limit} are accepted.")
    elif isinstance(component, gr.Checkbox):
        if not isinstance(value, bool):
            raise _refuse(f"{field}: expected true or false; got {_shown(value)}.")
    elif isinstance(component, CHOICE_COMPONENTS):
        _check_choices(component, value, field)
    elif isinstance(component, gr.Dataset):
        count = len(component.samples or [])
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise _refuse(f"{field}: expected the number of a preset from 0 to {count - 1}; got {_shown(value)}.")
    elif isinstance(component, FILE_COMPONENTS):
        _check_files(component, value, field, uploaded_only)


def _api_inputs(block_fn) -> list:
    """The inputs an API caller sends (State inputs are filled in by the server)."""
    return [block for block in block_fn.inputs if not block.skip_api]


def check_request(block_fn, inputs: list, state=None, uploaded_only: bool = True) -> None:
    """A gr.Error unless ``inputs`` has one acceptable value for each input of ``block_fn`` (see :func:`check_value`).

    ``state``: the session's Gradio state, whose copies of components carry the session's updates.
    """
    wanted = _api_inputs(block_fn)
    # Gradio fills State inputs in when a caller sends one value per API input; a caller that sends one value more
    # than that for an endpoint with one State sends as many as gradio_client does (a None in the State's place),
    # so that count is taken and its values are checked field by field.
    if len(inputs) != len(block_fn.inputs):
        name = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
        labels = ", ".join(_label(b) for b in wanted) or "none"
        raise _refuse(f"{name} takes {len(wanted)} inputs ({labels}); got {len(inputs)}.")
    for component, value in zip(block_fn.inputs, inputs, strict=True):
        if component.skip_api:
            continue
        optional = getattr(component, "value", None) is None
        if state is not None and component._id in state:
            component = state[component._id]  # the session's copy (after a gr.update of its maximum or choices)
        check_value(component, value, uploaded_only, optional)


# -- the hooks ----------------------------------------------------------------------------------------------------------
def _labelled_preprocess(component):
    """``component.preprocess`` whose errors name the field (Gradio's own, and image data that does not decode)."""
    preprocess = component.preprocess
    field = _label(component)

    def preprocess_named(payload):
        try:
            return preprocess(payload)
        except gr.Error as err:
            if str(err.message).startswith(field):
                raise
            raise _refuse(f"{field}: {err.message}") from err
        except (OSError, ValueError, SyntaxError) as err:  # an image whose header was fine but whose data is not
            if not isinstance(component, FILE_COMPONENTS):
                raise
            raise _refuse(
                f"{field}: the upload could not be decoded ({type(err).__name__}); upload a PNG, JPEG or WebP."
            ) from err

    preprocess_named.guarded = True
    return preprocess_named


def _guarded_process_api(blocks: gr.Blocks):
    process_api = blocks.process_api
    signature = inspect.signature(process_api)

    async def guarded(*args, **kwargs):
        call = signature.bind(*args, **kwargs).arguments
        block_fn = call["block_fn"]
        block_fn = blocks.fns[block_fn] if isinstance(block_fn, int) else block_fn
        name = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
        if call.get("iterator") is None and not block_fn.batch:
            check_request(block_fn, list(call["inputs"]), call.get("state"), not call.get("explicit_call", False))
        try:
            return await process_api(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # the handler or Gradio failed on input nobody checked: say so, without internals
            log.exception("%s failed", name)
            raise gr.Error(
                f"{name} could not handle this request ({type(err).__name__}); the app keeps serving. Check the "
                "inputs against the API page (“Use via API”).",
                title="Something went wrong",
            ) from err

    guarded.guarded = True
    return guarded


def guard(blocks: gr.Blocks) -> int:
    """Check every request to ``blocks`` at the boundary (see the module docstring); returns how many input
    components it covers. Idempotent; call it once the Blocks is built and before it is launched."""
    if not getattr(blocks.process_api, "guarded", False):
        blocks.process_api = _guarded_process_api(blocks)
    inputs = {block._id: block for fn in blocks.fns.values() for block in fn.inputs}
    for block in inputs.values():
        if isinstance(block, gr.components.Component) and not getattr(block.preprocess, "guarded", False):
            block.preprocess = _labelled_preprocess(block)
    return len(inputs)
