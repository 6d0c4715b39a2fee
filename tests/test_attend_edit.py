"""Edit where a word attends (explain.usecases.attend_edit): the word's thresholded map is the mask, the edited
prompt is inpainted only there, with the same seed; on a tiny SD-1 pipeline (4-channel blending) and the embedded
model with its 9-channel inpainting U-Net."""

import numpy as np
import pytest

from explain.usecases import task_models_available
from explain.usecases.attend_edit import AttendEditResult, edit_where_attends, word_mask
from explain.usecases.models import load_task_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a ginormous red cube"


def test_word_mask_thresholds_the_normalised_map_and_grows_it():
    heat = np.zeros((16, 16), np.float32)
    heat[4:8, 4:8] = 3.0  # min-max: 1 inside, 0 outside
    heat[0, 0] = 0.3
    assert word_mask(heat, 0.4).sum() == 16  # the 0.3 / 3 = 0.1 pixel stays out
    grown = word_mask(heat, 0.4, dilation=1)
    assert grown.sum() == 36 and grown[3:9, 3:9].all()
    for bad, message in (
        ({"threshold": 1.0}, "strictly between"),
        ({"dilation": -1}, "whole number"),
        ({"dilation": 1.5}, "whole number"),
    ):
        with pytest.raises(ValueError, match=message):
            word_mask(heat, **{"threshold": 0.4, **bad})
    with pytest.raises(ValueError, match="no pixel"):
        word_mask(np.ones((4, 4)), 0.4)  # a flat map normalises to 0


def _check(result: AttendEditResult):
    before, after = np.asarray(result.before), np.asarray(result.after)
    assert before.shape == after.shape and result.mask.shape == before.shape[:2]
    assert np.array_equal(before[~result.mask], after[~result.mask])  # kept pixels bit-identical
    assert result.changed.any() and result.share_inside == 1.0
    assert 0 < result.mask_area < 1
    # the mask is the map above tau, grown by the dilation
    assert word_mask(result.word_map, result.threshold, result.dilation).tolist() == result.mask.tolist()


def test_edit_where_a_word_attends_on_a_tiny_pipeline(pipe):
    inpainter = load_task_pipeline("inpaint", mode="blend", base=pipe)
    settings = dict(pipe=pipe, inpaint_pipe=inpainter, seed=3, steps=2, threshold=0.5, dilation=1)
    result = edit_where_attends(PROMPT, "cube", "a ginormous blue sphere", **settings)
    _check(result)
    assert result.inpainting.mode == "blend" and result.edited_prompt == "a ginormous blue sphere"
    again = edit_where_attends(PROMPT, "cube", "a ginormous blue sphere", **settings)
    assert np.array_equal(np.asarray(again.after), np.asarray(result.after))  # same seed, same edit
    with pytest.raises(ValueError, match="not a word"):
        edit_where_attends(PROMPT, "dog", "a cat", pipe=pipe, inpaint_pipe=inpainter, steps=1)
    with pytest.raises(ValueError, match="edited prompt is empty"):
        edit_where_attends(PROMPT, "cube", " ", pipe=pipe, inpaint_pipe=inpainter, steps=1)


@pytest.mark.skipif(not task_models_available(), reason="models/tiny-shapes-tasks missing")
def test_edit_where_a_word_attends_on_the_embedded_model(engine):
    base = engine.pipeline()
    inpainter = load_task_pipeline("inpaint", mode="unet", base=base)
    prompt = "a big red circle on the left and a small blue triangle on the right"
    edited = "a big green circle on the left and a small blue triangle on the right"
    result = edit_where_attends(
        prompt, "circle", edited, pipe=base, inpaint_pipe=inpainter, seed=1, steps=12, guidance=5.0
    )
    _check(result)
    assert result.inpainting.mode == "unet" and result.inpainting.in_channels == 9
    left = result.mask[:, : result.mask.shape[1] // 2].sum() / result.mask.sum()
    assert left > 0.8  # the circle is on the left: so is its mask
    after = np.asarray(result.after, dtype=np.int16)[result.mask]
    assert (after[:, 1] - after[:, 0]).mean() > 30  # inside the mask the circle turned green


@pytest.mark.skipif(not task_models_available(), reason="models/tiny-shapes-tasks missing")
def test_the_edit_command_writes_the_edit_and_says_where_it_changed(tmp_path, capsys):
    import json

    from PIL import Image

    from explain.cli import main

    prompt = "a big red circle on the left and a small blue triangle on the right"
    out = tmp_path / "edit"
    assert (
        main(
            [
                "edit",
                "--prompt",
                prompt,
                "--word",
                "circle",
                "--new-word",
                "square",
                "--steps",
                "6",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["edited_prompt"] == prompt.replace("circle", "square")
    assert summary["inpainting_mode"] == "unet" and summary["changed_share_inside_mask"] == 1.0
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert summary["mask_area"] == pytest.approx(mask.mean(), abs=1e-4)
    before, after = (np.asarray(Image.open(out / f"{n}.png")) for n in ("before", "after"))
    assert np.array_equal(before[~mask], after[~mask]) and not np.array_equal(before, after)
    assert "inside the mask" in capsys.readouterr().out
    assert main(["edit", "--prompt", prompt, "--word", "dog", "--new-word", "cat", "--out", str(out)]) == 2
    assert "'dog' is not a word of the prompt" in capsys.readouterr().err


def test_the_edit_evaluation_recolours_one_object_to_a_colour_the_scene_lacks():
    from training.evaluate_attend_edit import cases

    found = cases(2)
    assert len(found) >= 50
    for case in found:
        scene = case["prompt"].scene
        before, after = case["prompt"].prompt.split(), case["edited"].split()
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert changed == [(scene.objects[case["k"]].color, case["new"])]
        assert case["new"] not in {o.color for o in scene.objects}
    assert {c["k"] for c in found} == {0, 1}


def test_an_uploaded_image_is_edited_where_its_maps_say(pipe):
    from PIL import Image

    inpainter = load_task_pipeline("inpaint", mode="blend", base=pipe)
    img2img = load_task_pipeline("img2img", base=pipe)
    upload = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    result = edit_where_attends(
        PROMPT, "cube", "a ginormous blue sphere", pipe=pipe, inpaint_pipe=inpainter, image=upload,
        map_pipe=img2img, seed=2, steps=4, threshold=0.5, dilation=1,
    )  # fmt: skip
    assert np.array_equal(np.asarray(result.before), np.asarray(upload))  # the upload itself, not a generation
    _check(result)
    with pytest.raises(ValueError, match="needs map_pipe"):
        edit_where_attends(PROMPT, "cube", "a cat", pipe=pipe, inpaint_pipe=inpainter, image=upload, steps=1)
    with pytest.raises(ValueError, match="map_strength"):
        edit_where_attends(
            PROMPT, "cube", "a cat", pipe=pipe, inpaint_pipe=inpainter, image=upload, map_pipe=img2img,
            map_strength=0.0, steps=1,
        )  # fmt: skip
