"""UI-free core of the Stable Diffusion Attention Explorer.

Subpackages, in the order one generation flows through them (docs/ARCHITECTURE.md draws it):

- :mod:`explain.clip`: tokens, the text encoder's CLIP and its contrastive loss.
- :mod:`explain.diffusion`: loading pipelines, their geometry, noising and the toy Markov chain.
- :mod:`explain.capture`: the explicit attention op, the attention recorder and the film recorder.
- :mod:`explain.steering`: prompt-to-prompt edits and the experiments built on them.
- :mod:`explain.engine`: the one recorded run every view and the CLI generate through.
- :mod:`explain.maps`: DAAM aggregation and the views of a result.
- :mod:`explain.io`: file writers and figures.
- :mod:`explain.usecases`: super-resolution, style transfer, inpainting, outpainting.
- :mod:`explain.cli`: ``python -m explain ...`` (imports the library; nothing in the library imports it).
- :mod:`explain.world`: the procedural worlds the embedded model was trained on.

Submodules are imported on demand (``from explain.capture.recorder import AttentionRecorder``) so that
``import explain`` stays cheap and never loads a model.
"""

__all__: list[str] = []
