"""External attention-capture baselines (DAAM, attention-map-diffusers), each run in its own venv.

See ``benchmarks/external/venvs.py`` (environments), ``convert.py`` (model copy for old diffusers/transformers),
``run_daam.py`` and ``run_amd.py`` (the timed comparisons against plain diffusers in the same process).
"""
