"""The Denoise & attend tab's layout: one function per section, then the events that wire it to the handlers."""

from __future__ import annotations

import gradio as gr

from demo.common import IMAGE_FORMAT, MODEL_CONCURRENCY, explain, lesson, seed_input
from demo.tab_attend import layout_classroom
from demo.tab_attend.components import AttendUI, Deferred, Downloads, MapControls, Settings
from demo.tab_attend.forms import (
    CROSS_ATTENTION,
    DEFAULTS,
    DOWNSAMPLE_CHOICES,
    MAP_KIND_CHOICES,
    MAPS_CONCURRENCY,
    NORMALIZATION_CHOICES,
    PART_CHOICES,
    PRESET_STEPS,
    STOP_CONCURRENCY,
)
from explain.diffusion.geometry import SizeLimits
from explain.engine.requests import MAX_GUIDANCE, MAX_STEPS, SCHEDULER_CHOICES
from explain.maps.aggregation import NORMALIZATIONS

__all__ = ["build"]


def build(tab, pipe_limits: SizeLimits, joint: bool = False) -> dict:
    """Create the tab on ``tab`` (an :class:`AttendTab`; call inside ``gr.Tab``); returns the permalinks' inputs."""
    assert {v for _, v in NORMALIZATION_CHOICES} == set(NORMALIZATIONS)  # noqa: S101  (choices follow explain/)
    lesson("attend")
    state = gr.State(None)
    deferred = _deferred_outputs()  # shown further down, but the presets (next to the inputs) need them
    form, image, examples = _build_form(tab, deferred, pipe_limits)
    maps = _build_maps(deferred, joint)
    scoring = layout_classroom.build_score(tab.world)
    downloads = _build_film_and_qkv(deferred, joint)
    guidance = layout_classroom.build_guidance()
    ui = AttendUI(state, deferred, form, image, examples, maps, downloads)
    generated = _wire_generation(tab, ui)
    _wire_views(tab, ui)
    restored = _wire_presets(tab, ui)  # a preset's first view follows the map controls in the same event
    setups = layout_classroom.wire(tab.classroom, ui, scoring, guidance, [*generated, restored])
    for event in setups[: len(generated)]:  # then a generation's first view, as the map controls are set now
        event.success(
            tab.maps, ui.view_inputs, ui.view_outputs, api_visibility="undocumented", concurrency_id=MAPS_CONCURRENCY
        )
    return {"inputs": ui.form.inputs}


def _deferred_outputs() -> Deferred:
    """The gallery, x_t/x̂₀ pair and film, not rendered yet."""
    gallery = gr.Gallery(
        elem_classes=["pixels"],
        label="Cross-attention per word (red = strong)",
        elem_id="attend-gallery",
        columns=4,
        height="auto",
        format=IMAGE_FORMAT,
        object_fit="contain",
        render=False,
    )
    pair = gr.Gallery(
        elem_classes=["pixels"],
        label="At the chosen step: noisy sample x_t and predicted clean image x̂₀",
        columns=2,
        height=300,
        format=IMAGE_FORMAT,
        object_fit="contain",
        render=False,
    )
    film = gr.Image(
        label="Film: x̂₀ and every word's map, step by step (GIF)",
        type="filepath",
        height=300,
        format="gif",
        interactive=False,
        render=False,
    )
    return Deferred(gallery, pair, film)


def _build_form(tab, deferred: Deferred, pipe_limits: SizeLimits) -> tuple[Settings, gr.Image, gr.Examples]:
    """The generation form, the live image and the presets."""
    with gr.Row():
        with gr.Column(scale=3):
            form = _settings(tab, pipe_limits)
        with gr.Column(scale=2):
            image = gr.Image(
                label="Image (live: the model's current guess while denoising)",
                elem_id="attend-image",
                format=IMAGE_FORMAT,
                height=380,
                elem_classes=["pixels"],
                interactive=False,
            )
            examples = _presets(tab, form, image, deferred)
        with gr.Column(scale=1):
            explain(
                "While it runs you see the model's **current guess of the final image** (x̂₀) after each step: "
                "blurry blobs first, details last. **Stop** ends the run after the current step. Same seed and "
                "settings → the same picture, every time."
            )
    return form, image, examples


def _settings(tab, pipe_limits: SizeLimits) -> Settings:
    """The request's fields, Generate and Stop, the status lines."""
    multiple, default_hw, max_side = pipe_limits.multiple, pipe_limits.default_hw, pipe_limits.max_side
    prompt = gr.Textbox(tab.world.default_prompt, label="Prompt", lines=2, elem_id="attend-prompt")
    negative = gr.Textbox("", label="Negative prompt (what to steer away from; the 'unconditional' branch)")
    with gr.Row():
        seed = seed_input(DEFAULTS["seed"], label="Seed")
        steps = gr.Slider(1, MAX_STEPS, value=DEFAULTS["steps"], step=1, label="Steps", elem_id="attend-steps")
        guidance = gr.Slider(0, MAX_GUIDANCE, value=tab.guidance, step=0.5, label="Guidance scale")
    with gr.Row():
        scheduler = gr.Dropdown(list(SCHEDULER_CHOICES), value="default", label="Scheduler (sampler)")
        height = gr.Slider(multiple, max_side, value=default_hw[0], step=multiple, label="Height (px)")
        width = gr.Slider(multiple, max_side, value=default_hw[1], step=multiple, label="Width (px)")
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", size="lg", elem_id="attend-generate")
        stop = gr.Button("Stop", variant="stop", size="lg", elem_id="attend-stop")
    status = gr.Markdown("Press **Generate**, or click a preset.", elem_id="status")
    stop_note = gr.Markdown(elem_id="stop-note")
    return Settings(
        prompt, negative, seed, steps, guidance, scheduler, height, width, generate, stop, status, stop_note
    )


def _presets(tab, form: Settings, image: gr.Image, deferred: Deferred) -> gr.Examples:
    """One-click presets, run without streaming and cached lazily (:meth:`AttendTab.preset`)."""
    return gr.Examples(
        [[p.prompt, "", p.seed, PRESET_STEPS, tab.guidance, p.scheduler] for p in tab.world.presets],
        inputs=[form.prompt, form.negative, form.seed, form.steps, form.guidance, form.scheduler],
        outputs=[image, form.status, deferred.gallery, deferred.pair, deferred.film],
        fn=tab.preset,
        cache_examples=True,
        cache_mode="lazy",
        label="Presets (one click)",
        example_labels=[p.label for p in tab.world.presets],
    )


def _build_maps(deferred: Deferred, joint: bool) -> MapControls:
    """Where each word looks: the per-word gallery, masks and the map controls."""
    gr.Markdown("### Where each word looks")
    with gr.Row():
        with gr.Column(scale=3):
            deferred.gallery.render()
            masks = gr.Gallery(
                elem_classes=["pixels"],
                label="Masks: pixels above the threshold",
                elem_id="attend-masks",
                columns=4,
                height="auto",
                format=IMAGE_FORMAT,
                object_fit="contain",
            )
        with gr.Column(scale=1):
            explain(
                "Each picture is one word's attention, averaged over the chosen layers, heads and steps, laid over "
                "the image. 'circle' should light up the circle, 'left' the left side. Move the **step** slider: "
                "the layout is decided in the first steps."
            )
        if joint:
            explain(
                "This model has **no cross-attention**: text and image tokens attend jointly (MMDiT). Pick the kind "
                "of map below: the joint attention (image rows × text columns, renormalised over the text or as "
                "computed) or ConceptAttention, read in the blocks' output space. Maps are averaged over the steps."
            )
    return _map_controls(masks, joint)


def _map_controls(masks: gr.Gallery, joint: bool) -> MapControls:
    """The step, layer, head, normalisation and threshold controls under the maps."""
    with gr.Row():
        step = gr.Slider(
            0,
            max(0, DEFAULTS["steps"] - 1),
            value=0,
            step=1,
            label="Step (0 = first, most noisy)",
            elem_id="attend-step",
            scale=3,
        )
        all_steps = gr.Checkbox(True, label="Average over all steps", scale=1)
    with gr.Row():
        parts = gr.CheckboxGroup(PART_CHOICES, value=[], label="U-Net parts (none ticked = all)")
        downsamples = gr.CheckboxGroup(DOWNSAMPLE_CHOICES, value=[], label="Feature-map size (none = all)")
        heads = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Heads (empty = all)")
    with gr.Row():
        normalization = gr.Radio(NORMALIZATION_CHOICES, value="minmax", label="Normalisation")
        threshold = gr.Slider(0, 1, value=0.4, step=0.05, label="Mask threshold (0 = no mask)")
        content_only = gr.Checkbox(True, label="Content words only (hide a, the, on, and …)")
    kinds = MAP_KIND_CHOICES if joint else [("cross-attention", CROSS_ATTENTION)]
    kind = gr.Radio(kinds, value=kinds[0][1], label="Kind of map", visible=joint, elem_id="attend-kind")
    info = gr.Markdown(elem_id="attend-map-info")
    controls = (step, all_steps, parts, downsamples, heads, normalization, threshold, content_only, kind)
    return MapControls(masks, *controls, info)


def _build_film_and_qkv(deferred: Deferred, joint: bool) -> Downloads:
    """The film, the Q/K/V table of one layer and the downloads."""
    gr.Markdown("### The denoising film and the attention arithmetic")
    with gr.Row():
        with gr.Column(scale=2):
            deferred.pair.render()
        with gr.Column(scale=2):
            deferred.film.render()
        with gr.Column(scale=1):
            explain(
                "Left: the noisy sample the sampler holds after the step, and the clean image the model "
                "predicts from it. Right: the whole run as an animation, each word's map beside x̂₀."
            )
    with gr.Row():
        with gr.Column(scale=3):
            label = "Joint-attention layer" if joint else "Cross-attention layer"
            layer = gr.Dropdown([], label=label, allow_custom_value=True, elem_id="attend-layer")
            qkv = gr.Markdown()
        with gr.Column(scale=1):
            explain(
                "Q comes from the **image** (one row per position of this layer's feature map), K and V from the "
                "**text** (one row per token slot). A = softmax(QKᵀ/√d) has one row per position and one column "
                "per token: a column, folded back to the grid, is a heat map."
            )
    with gr.Row():
        prepare = gr.Button("Prepare downloads")
        grid = gr.DownloadButton("Heat-map grid (PNG)", value=None)
        film = gr.DownloadButton("Film (GIF)", value=None)
        npz = gr.DownloadButton("Maps (NPZ)", value=None)
        settings = gr.DownloadButton("Settings (JSON)", value=None)
    link = gr.Textbox(label="Permalink: open it to get these settings back", buttons=["copy"], interactive=False)
    return Downloads(layer, qkv, prepare, grid, film, npz, settings, link)


# -- events ---------------------------------------------------------------------------------------------------------------
def _wire_generation(tab, ui: AttendUI):
    """Generate (streamed) and Stop (which also stops "Guidance taken apart"); returns the generating events."""
    form = ui.form
    gen_event = form.generate.click(
        tab.generate,
        form.inputs,
        ui.gen_outputs,
        api_name="generate",
        concurrency_id=MODEL_CONCURRENCY,
        concurrency_limit=1,
    )
    submit_event = form.prompt.submit(
        tab.generate, form.inputs, ui.gen_outputs, api_visibility="undocumented", concurrency_id=MODEL_CONCURRENCY
    )
    form.generate.click(lambda: "", None, [form.stop_note], api_visibility="private", queue=False)
    form.stop.click(
        tab.stop,
        None,
        [form.stop_note],
        cancels=[gen_event],
        api_name="stop",
        concurrency_id=STOP_CONCURRENCY,
        concurrency_limit=None,
    )
    return [gen_event, submit_event]


def _wire_views(tab, ui: AttendUI) -> None:
    """Map controls, the step slider, the Q/K/V layer, downloads and the permalink."""
    m, d, form = ui.maps, ui.downloads, ui.form
    map_events = [m.all_steps.input, m.parts.input, m.downsamples.input, m.heads.input, m.normalization.input]
    map_events += [m.threshold.release, m.content_only.input, m.kind.input]
    gr.on(map_events, tab.maps, ui.view_inputs, ui.view_outputs, api_name="maps", concurrency_id=MAPS_CONCURRENCY)
    m.step.release(
        tab.maps_at_step,
        ui.view_inputs,
        [*ui.view_outputs, m.all_steps],
        api_visibility="undocumented",
        concurrency_id=MAPS_CONCURRENCY,
    )
    d.layer.input(tab.qkv, [ui.state, d.layer], [d.qkv], api_name="qkv")
    d.prepare.click(tab.export, ui.view_inputs, [d.grid, d.film, d.npz, d.settings, d.link], api_name="export")
    gr.on(
        [
            form.generate.click,
            form.prompt.blur,
            form.negative.blur,
            form.seed.change,
            form.steps.release,
            form.guidance.release,
            form.scheduler.input,
        ],
        tab.permalink,
        form.inputs,
        [d.link],
        api_name="permalink",
    )


def _wire_presets(tab, ui: AttendUI):
    """After a cached preset: rebuild the session's explorable result, then its permalink; returns the rebuild."""
    m, d = ui.maps, ui.downloads
    restored = ui.examples.cache_event.then(
        tab.restore,
        ui.form.inputs + ui.view_inputs,  # the state, then the map controls
        [ui.state, m.step, m.heads, d.layer, d.qkv, *ui.view_outputs],
        api_visibility="private",
        concurrency_id=MODEL_CONCURRENCY,
    )
    restored.then(tab.permalink, ui.form.inputs, [d.link], api_visibility="private")
    return restored
