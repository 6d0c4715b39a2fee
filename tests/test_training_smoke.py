"""World v2's build runs end to end at smoke size, resumes a stopped U-Net, and packages a loadable pipeline."""

import json

import pytest

from training.build import main as build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("world")
    out = work / "pipe"
    assert build(["--preset", "world-smoke", "--work", str(work), "--out", str(out), "--threads", "1"]) == 0
    return work, out


def test_the_packaged_world_model_loads_and_generates_128px(built):
    from explain.diffusion.loading import load_pipeline

    _, out = built
    assert json.loads((out / "explorer.json").read_text())["world"] == "emoji"
    pipe = load_pipeline(str(out))
    assert pipe.vae_scale_factor == 8  # SD's factor: 128 x 128 images, 16 x 16 latents
    image = pipe("a cat wearing sunglasses", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (128, 128, 3)


def test_a_stopped_unet_run_resumes_where_it_was(built, capsys):
    work, out = built
    log = json.loads((work / "unet_log.json").read_text())
    assert log["steps_done"] == 3 and (work / "unet_resume.pt").exists()
    args = ["--preset", "world-smoke", "--work", str(work), "--out", str(out), "--threads", "1"]
    assert build([*args, "--stages", "unet", "--force", "--unet-steps", "5"]) == 0
    assert "resumed at step 3" in capsys.readouterr().out
    assert json.loads((work / "unet_log.json").read_text())["steps_done"] == 5


def test_the_short_text_tower_trains_exactly_like_the_full_one():
    """The loss and every gradient on the used ids x the longest caption equal those of the 49 408 x 77 tower,
    the rows and positions left out get exactly zero gradient there, and write_back restores the full model."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from explain.clip.contrastive import contrastive_loss
    from training.config import preset
    from training.models import build_clip
    from training.train_clip import ShortText, tokenize

    cfg = dataclasses.replace(preset("world-smoke").clip, image_size=32)
    torch.manual_seed(0)
    full = build_clip(cfg)
    captions = ["a cat wearing sunglasses", "two bowls of ramen on the left", "a red car next to a dog", ""]
    tokens = tokenize(captions)  # (4, 77)
    short_text = ShortText.of(tokens)
    assert short_text.length == int((tokens != 0).sum(1).max()) < 20
    short = short_text.model(full, cfg)
    images = torch.randn(len(captions), 3, 32, 32)

    def loss_of(model, ids):
        i_e = F.normalize(model.encode_image(images), dim=-1)
        t_e = F.normalize(model.encode_text(ids), dim=-1)
        loss = contrastive_loss(i_e, t_e, model.logit_scale.exp())
        loss.backward()
        return loss.item()

    assert abs(loss_of(short, short_text.compact(tokens)) - loss_of(full, tokens)) < 1e-6
    grads = {k: p.grad for k, p in full.named_parameters()}
    for name, p in short.named_parameters():
        g = grads[name]
        if name == "token_embedding.weight":
            unused = torch.ones(len(g), dtype=torch.bool)
            unused[short_text.used] = False
            assert g[unused].abs().max() == 0
            g = g[short_text.used]
        elif name == "positional_embedding":
            assert g[short_text.length :].abs().max() == 0
            g = g[: short_text.length]
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4), name
    with torch.no_grad():
        for p in short.parameters():
            p.add_(1.0)
    before = full.token_embedding.weight.clone()
    short_text.write_back(short, full)
    assert torch.equal(full.token_embedding.weight[short_text.used], short.token_embedding.weight)
    untouched = torch.ones(len(before), dtype=torch.bool)
    untouched[short_text.used] = False
    assert torch.equal(full.token_embedding.weight[untouched], before[untouched])
    assert torch.equal(full.positional_embedding[: short_text.length], short.positional_embedding)
    assert torch.equal(full.visual.proj, short.visual.proj)


def test_a_warm_start_keeps_only_the_used_token_rows_and_restores_the_model(tmp_path):
    """save_warm_start stores the non-zero token rows with their ids; init_from gives back the float16 model."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from training.config import preset
    from training.models import build_clip, zero_unused_token_rows
    from training.train_clip import USED_IDS_KEY, init_from, save_warm_start, tokenize

    cfg = dataclasses.replace(preset("world-smoke").clip, image_size=32)
    torch.manual_seed(0)
    model = build_clip(cfg)
    used = torch.unique(tokenize(["a cat wearing sunglasses", ""]))
    zero_unused_token_rows(model, used)
    path = save_warm_start(model, tmp_path / "clip.safetensors")
    stored = load_file(path)
    assert torch.equal(stored[USED_IDS_KEY], used) and stored["token_embedding.weight"].shape == (len(used), 64)
    restored = build_clip(cfg)
    assert init_from(restored, path) == []
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a.half().float(), b), name
