"""UI-free core of the Stable Diffusion Attention Explorer.

Submodules are imported on demand (``from explain.attention import AttentionRecorder``) so that
``import explain`` stays cheap and never loads a model.
"""

__all__: list[str] = []
