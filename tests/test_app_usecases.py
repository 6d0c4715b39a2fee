"""The Use cases tab: handlers on the embedded model, and /upscale, /inpaint served in-process via gradio_client."""

import os

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from explain.diffusion.loading import EMBEDDED_MODEL_DIR
from explain.usecases import task_models_available
from explain.world.content import SHAPES

STEPS = 3  # the tab's default is 20; a few steps keep the tests quick on a busy CPU

pytestmark = pytest.mark.skipif(
    not ((EMBEDDED_MODEL_DIR / "model_index.json").is_file() and task_models_available()),
    reason="embedded model or models/tiny-shapes-tasks missing",
)


def _layer() -> np.ndarray:
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:48, 32:64] = 255
    return layer


@pytest.fixture(scope="module")
def tab(engine):
    from demo.tab_usecases import UseCasesTab

    return UseCasesTab(engine)


@pytest.fixture(scope="module")
def sample():
    from demo.tab_usecases import world_sample

    return world_sample()


def test_upscale_handler(tab, sample):
    from matplotlib.figure import Figure

    image, caption = sample
    low, bicubic, out, figure, gallery, summary = tab.upscale(image, caption, 20, 0, STEPS)
    assert low.size == (16, 16) and bicubic.size == out.size == (64, 64)
    assert isinstance(figure, Figure)
    assert gallery and all(isinstance(img, np.ndarray) and isinstance(label, str) for img, label in gallery)
    assert "StableDiffusionUpscalePipeline" in summary


def test_inpaint_handler_keeps_unmasked_pixels(tab, sample):
    image, caption = sample
    editor = {"background": image, "layers": [_layer()], "composite": image}
    mask, raw, out, figure, gallery, summary = tab.inpaint(editor, caption, "unet", 0, STEPS)
    assert mask.shape == (64, 64) and mask[20, 40] == 255 and mask[0, 0] == 0
    result = np.asarray(out)
    assert np.array_equal(result[:16], image[:16])  # outside the mask: kept exactly
    assert figure is not None and len(gallery) >= 3 and "unet" in summary


def test_bad_inputs_give_clear_errors(tab, sample):
    import gradio as gr

    image, caption = sample
    with pytest.raises(gr.Error, match="empty"):
        tab.inpaint({"background": image, "layers": [], "composite": image}, caption, "unet", 0, STEPS)
    with pytest.raises(gr.Error, match="No image"):
        tab.upscale(None, caption, 20, 0, STEPS)
    with pytest.raises(gr.Error, match="nothing to outpaint"):
        tab.outpaint(image, caption, 0, 0, 0, 0, 1.0, "unet", 0, STEPS)
    with pytest.raises(gr.Error, match="strength"):
        tab.stylize(image, ["striped"], caption, 0.1, 0, STEPS)  # int(3 x 0.1) = 0 denoising steps


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
    import gradio as gr

    from demo.app import free_port, launch_options
    from demo.tab_usecases import UseCasesTab

    with gr.Blocks() as demo:
        UseCasesTab(engine).build()
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options())
    yield Client(url, verbose=False)
    demo.close()


@pytest.fixture(scope="module")
def files(sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("usecases")
    Image.fromarray(sample[0]).save(folder / "image.png")
    Image.fromarray(_layer()).save(folder / "mask.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(folder / "empty.png")
    return folder


def test_endpoints(client, files, sample):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/upscale", "/stylize", "/inpaint", "/outpaint"} <= names
    caption = sample[1]
    low, bicubic, out, plot, gallery, summary = client.predict(
        handle_file(str(files / "image.png")), caption, 20, 0, STEPS, api_name="/upscale"
    )
    assert Image.open(out).size == (64, 64) and Image.open(low).size == (16, 16)
    assert plot["plot"].startswith("data:image/png") and gallery and "Upscale" in summary
    editor = {
        "background": handle_file(str(files / "image.png")),
        "layers": [handle_file(str(files / "mask.png"))],
        "composite": None,
    }
    mask, raw, out, plot, gallery, summary = client.predict(editor, caption, "unet", 0, STEPS, api_name="/inpaint")
    assert Image.open(out).size == (64, 64) and len(gallery) >= 3 and "1024 pixels filled" in summary
    editor["layers"] = [handle_file(str(files / "empty.png"))]
    with pytest.raises(AppError, match="empty"):
        client.predict(editor, caption, "unet", 0, STEPS, api_name="/inpaint")


def test_attend_edit_handler_edits_only_where_the_word_attends(tab):
    import gradio as gr

    EDIT_PROMPT = SHAPES.default_prompt  # the tab's first edit on the embedded (shapes) model

    edited = EDIT_PROMPT.replace("circle", "square")
    out = tab.attend_edit(EDIT_PROMPT, "circle", edited, 0.4, 2, "unet", 1, 8)
    assert [caption for _, caption in out.gallery] == [
        "before",
        "“circle”'s map",
        "mask: map > 0.4, grown 2 px",
        "after",
        "|difference| × 4",
    ]
    before, _, mask, after, _ = (np.asarray(image) for image, _ in out.gallery)
    inside = mask > 0
    assert np.array_equal(before[~inside], after[~inside]) and not np.array_equal(before, after)
    assert inside[:, :32].sum() > 0.8 * inside.sum()  # the circle is on the left
    assert "**100.0%** of them inside the mask" in out.summary and "9-channel" in out.summary
    uploaded = tab.attend_edit(EDIT_PROMPT, "circle", edited, 0.4, 2, "unet", 1, 8, before)
    assert np.array_equal(np.asarray(uploaded.gallery[0][0]), before)  # the upload is what is edited
    assert "In the uploaded image" in uploaded.summary
    with pytest.raises(gr.Error, match="'dog' is not a word of the prompt"):
        tab.attend_edit(EDIT_PROMPT, "dog", edited, 0.4, 2, "unet", 1, 8)
    with pytest.raises(gr.Error, match="edited prompt is empty"):
        tab.attend_edit(EDIT_PROMPT, "circle", "", 0.4, 2, "unet", 1, 8)


def test_the_attend_edit_endpoint_is_served(client):
    EDIT_PROMPT = SHAPES.default_prompt  # the tab's first edit on the embedded (shapes) model

    gallery, summary = client.predict(
        EDIT_PROMPT,
        "triangle",
        EDIT_PROMPT.replace("blue", "green"),
        0.4,
        2,
        "blend",
        0,
        STEPS,
        api_name="/attend_edit",
    )
    assert len(gallery) == 5 and "“triangle” attended to" in summary and "mode **blend**" in summary
