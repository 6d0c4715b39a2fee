"""Engine: the one recorded generation path shared by the app, the steering experiments, the use cases and the CLI.

- :mod:`.run`: :func:`~explain.engine.run.recorded_run`, the only place that calls a diffusion pipeline to generate.
- :mod:`.session`: the app's model holder (:class:`~explain.engine.session.Engine`) and streamed generation.
- :mod:`.guidance`: one step's classifier-free guidance taken apart (ε_uncond, ε_cond, difference, guided).
"""
