"""Files and figures: one writer per format, shared by the CLI, the app and the use cases.

- :mod:`.formats`: JSON, GIF and captioned image pairs (no torch: the CLI uses them before a model loads).
- :mod:`.writers`: ``attention.npz``, heat-map PNGs, ``film.gif``.
- :mod:`.exports`: the app's downloads of one generation (the CLI's formats plus documented extras).
- :mod:`.figures`: matplotlib figures (object-oriented API, Agg backend).
"""
