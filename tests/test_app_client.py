"""The app served in-process and driven through gradio_client, endpoint by endpoint (embedded model)."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

PROMPT = "a big red circle on the left and a small blue triangle on the right"
STEPS = 5


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "upload.png"
    from explain.world import make_batch

    Image.fromarray(make_batch(1, 4)[0].image).save(path)
    return str(path)


def _is_png_plot(value) -> bool:
    return isinstance(value, dict) and value["type"] == "matplotlib" and value["plot"].startswith("data:image/png")


def _gallery_captions(value) -> list[str]:
    assert isinstance(value, list)
    for item in value:
        assert Path(item["image"]).suffix == ".png"
    return [item["caption"] for item in value]


def test_api_names(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {
        "/tokenize",
        "/clip_samples",
        "/clip_batch",
        "/zero_shot",
        "/text_states",
        "/markov",
        "/noise_image",
        "/noise_animation",
        "/strength",
        "/generate",
        "/stop",
        "/maps",
        "/qkv",
        "/export",
        "/permalink",
        "/steer_reweight",
        "/steer_swap",
        "/steer_drop",
        "/guidance_sweep",
        "/upscale",
        "/stylize",
        "/inpaint",
        "/outpaint",
        "/attend_edit",  # edit where a word attends (tests/test_app_usecases.py)
        "/clip_train",  # the classroom endpoints (tests/test_app_classroom.py)
        "/score_map",
        "/guidance_parts",
        "/causal_check",
    }


def test_clip_endpoints(client, image_file):
    html, table, summary = client.predict("a ginormous cube", api_name="/tokenize")
    assert "slot" in html and table["headers"] == ["slot", "token", "kind", "word"] and "7 of 77" in summary
    gallery, texts = client.predict(3, 0, api_name="/clip_samples")
    assert len(_gallery_captions(gallery)) == 3 and len(texts.splitlines()) == 3
    plot, code, rows, cols, loss = client.predict(
        3, 0, [handle_file(image_file)], texts + "\na shape", False, 10, api_name="/clip_batch"
    )
    assert (
        _is_png_plot(plot)
        and "loss_t" in code
        and len(rows["data"]) == 4
        and len(cols["data"]) == 4
        and "loss" in loss
    )
    label = client.predict(handle_file(image_file), "a red circle\na blue star", api_name="/zero_shot")
    assert {c["label"] for c in label["confidences"]} == {"a red circle", "a blue star"}
    text, states = client.predict(PROMPT, api_name="/text_states")
    assert "77" in text and states["data"][0][2] == "bos"


def test_noise_endpoints(client, image_file):
    plot, text = client.predict(12, 100, "rainy", 0, api_name="/markov")
    assert _is_png_plot(plot) and "Stationary" in text
    strip, schedule, text = client.predict("upload", 0, handle_file(image_file), 300, 0, api_name="/noise_image")
    assert _is_png_plot(strip) and _is_png_plot(schedule) and "t = 300" in text
    gif = client.predict("world sample", 2, None, 0, api_name="/noise_animation")
    assert Image.open(gif).format == "GIF"
    text, plot = client.predict(0.6, 25, api_name="/strength")
    assert "t = " in text and _is_png_plot(plot)


def test_generation_streams_previews_and_the_explorer_follows(client):
    job = client.submit(PROMPT, "", 3, STEPS, 7.5, "DDIM", 64, 64, api_name="/generate")
    outputs = [out for out in job]  # one item per yield: previews, then the final outputs
    assert len(job.outputs()) >= STEPS + 1 and len(outputs) >= 3
    first_preview = job.outputs()[0][0]
    assert Image.open(first_preview).size == (64, 64)
    image, status, gallery, pair, film, step, heads, layer, qkv = job.outputs()[-1]
    assert Image.open(image).size == (64, 64) and status.startswith("Done: 5 steps with DDIMScheduler")
    assert "“circle”" in _gallery_captions(gallery) and len(pair) == 2 and Image.open(film).format == "GIF"
    assert "[256 × 64]" in qkv  # Q of the first layer: 16 x 16 positions x 64 channels

    gallery, masks, pair, info = client.predict(2, False, ["up"], [1], ["1"], "softmax", 0.5, True, api_name="/maps")
    assert "step 3 of 5" in info and len(_gallery_captions(masks)) == len(gallery)
    assert "4 heads" in client.predict("mid_block.attentions.0.transformer_blocks.0.attn2", api_name="/qkv")
    grid, film, npz, settings, link = client.predict(0, True, [], [], [], "minmax", 0.4, True, api_name="/export")
    assert [Path(p).suffix for p in (grid, film, npz, settings)] == [".png", ".gif", ".npz", ".json"]
    assert "seed=3" in link
    assert "prompt=a+red+star" in client.predict(
        "a red star", "", 1, 10, 7.5, "default", 64, 64, api_name="/permalink"
    )


def test_stop_ends_a_run_early_and_the_next_run_succeeds(url):
    client = Client(url, verbose=False)
    job = client.submit(PROMPT, "", 0, 150, 7.5, "default", 64, 64, api_name="/generate")
    seen = threading.Event()
    for count, _ in enumerate(job, start=1):
        if count == 3 and not seen.is_set():
            seen.set()
            assert client.predict(api_name="/stop").startswith("⏹ Stopped: the run ends after the current step")
    status = job.outputs()[-1][1]
    assert "Stopped early" in status
    done = int(status.split("Done: ")[1].split(" steps")[0])
    assert done < 150
    final = client.predict(PROMPT, "", 0, 3, 7.5, "default", 64, 64, api_name="/generate")
    assert final[1].startswith("Done: 3 steps")
    assert client.predict(api_name="/stop") == "Nothing is running."


def test_two_clients_get_their_own_results(url):
    requests = {"circle": ("a big red circle in the center", 11), "star": ("a small yellow star at the top", 12)}

    def run(word):
        client = Client(url, verbose=False)  # one client = one browser session
        prompt, seed = requests[word]
        image, status, gallery, *_ = client.predict(prompt, "", seed, 4, 7.5, "default", 64, 64, api_name="/generate")
        maps = client.predict(0, True, [], [], [], "minmax", 0, True, api_name="/maps")
        return status, _gallery_captions(gallery), _gallery_captions(maps[0])

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(requests, pool.map(run, requests), strict=True))
    for word, (status, captions, explored) in results.items():
        other = "star" if word == "circle" else "circle"
        assert f"seed {requests[word][1]}" in status
        assert f"“{word}”" in captions and f"“{other}”" not in captions
        assert captions == explored  # the session's own result, not the other client's


def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(client, tmp_path):
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("", "", 0, 4, 7.5, "default", 64, 64, api_name="/generate")
    with pytest.raises(AppError, match="less than minimum value 1"):  # the Steps slider's own bound
        client.predict(PROMPT, "", 0, 0, 7.5, "default", 64, 64, api_name="/generate")
    with pytest.raises(AppError, match="greater than maximum"):
        client.predict(PROMPT, "", 0, 4, 7.5, "default", 8192, 64, api_name="/generate")
    with pytest.raises(AppError, match="tokens long"):
        client.predict("red " * 100, "", 0, 4, 7.5, "default", 64, 64, api_name="/generate")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(AppError):
        client.predict(3, 0, [handle_file(str(text_file))], "", False, 10, api_name="/clip_batch")
    assert "slots used" in client.predict("still serving", api_name="/tokenize")[2]


def test_words_the_model_never_saw_are_named_in_the_status(client):
    *_, last = client.submit("a red unicorn on the left", "", 0, 2, 5.0, "default", 64, 64, api_name="/generate")
    status = last[1]
    assert status.startswith("Done: 2 steps")
    assert "`unicorn` is not a word this model has seen; it gets no attention of its own." in status
    assert "e.g. “a big red circle on the left and a small blue triangle on the right”" in status  # one it knows
    *_, last = client.submit("a red circle on the left", "", 0, 2, 5.0, "default", 64, 64, api_name="/generate")
    assert "not a word this model has seen" not in last[1]
