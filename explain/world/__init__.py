"""The procedural worlds the embedded models are trained on, each fully labelled (captions, word spans, masks).

- :mod:`explain.world.shapes`: the shapes world of ``models/tiny-shapes-sd`` (36 words, 64 x 64).
- :mod:`explain.world.emoji`: world v2, Noto Color Emoji sprites plus the shapes (about 70 nouns, 128 x 128),
  drawn from a committed sprite atlas (:mod:`explain.world.atlas`).

``from explain import world`` keeps meaning the shapes world's API, so older code and the use cases keep working.
"""

from explain.world.shapes import *  # noqa: F403
from explain.world.shapes import __all__  # noqa: F401
