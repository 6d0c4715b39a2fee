"""An automatic judge of shapes-world images: which objects are where, and does that match the prompt?

(Used by the evaluation in ``training/`` and by the app's classroom for the true mask of an object.)

Pipeline of :func:`detect` (numpy only, ~25 ms for a 64x64 image):

1. **Background.** Every world background is constant along a row (light, night, sky over grass, the vertical
   sunset gradient), so each row's background colour is read off the left and right canvas edges (rows where an
   object touches an edge take the nearest agreeing rows); off-colour generated backgrounds are handled alike.
2. **Colour unmixing.** Every pixel is explained as a blend ``p = b + a (c - b)`` of one palette colour ``c``
   (``world.COLORS``) and its row's background ``b`` (or a row 3 px above/below); the blend with the least
   perpendicular residual wins. Unlike nearest-colour, this neither paints an orange halo around a red disc on a
   light background nor calls the grass "a green object". Object pixels have ``a >= 0.3`` in a region that
   reaches ``a >= 0.5`` somewhere or is long enough to be a blurred outline. Coreless fringes of a neighbouring
   colour (no pixel with ``a >= 0.75``) join the region's dominant colour.
3. **Per colour:** morphological closing (bridges the stripes of ``striped``), hole filling (turns an ``outlined``
   ring into its silhouette), 8-connected components, components under ``min_area`` of the canvas dropped.
4. **Shape:** scale-invariant, blur-tolerant features of the filled silhouette (bbox fill ratio, convex-hull
   solidity, aspect ratio, vertical skewness, Fourier coefficients of the radial profile r(theta); the world is
   axis-aligned, so phases are meaningful: a square and a diamond differ in the sign of the 4th harmonic),
   classified by a small multinomial logistic regression. Its weights are fitted by :func:`training.judge.fit_shape_classifier`
   on this very segmentation applied to rendered world scenes, 1/3 clean and 2/3 degraded like generator output
   (:func:`training.judge.degrade`: blur, noise, JPEG, colour cast), and stored as constants in
   :mod:`explain.world.judging.shape_classifier` (``python -m training.judge
   --fit`` reproduces them).

:func:`judge` parses the prompt (``world.parse_prompt``), matches each expected object to the largest detected
region of its colour (world scenes use distinct colours per object) and checks colour, shape and position.

Measured by ``python -m training.judge`` (:func:`training.judge.validate`: 600 fresh renders, styles and scenes oversampled,
held-out pairs included, 1 in 10 with three objects; a second prompt per image with one attribute of one object
changed for the false-accept rate):

- clean renders: accepts 99.8 % (plain 100 %, outlined 100 %, striped 99.2 %; night, grass, sunset 100 %),
  shape accuracy 99.9 %, mask IoU with the true mask 0.92, false accepts 0.0 %;
- degraded renders: accepts 91.0 % (plain 96.0 %, outlined 86.8 %, striped 86.8 %; night 93.8 %, grass 88.2 %,
  sunset 82.5 %), shape accuracy 93.9 %, mask IoU 0.83, false accepts 0.5 %.
"""

from explain.world.judging.shape_classifier import FEATURE_NAMES, ShapeClassifier, shape_features
from explain.world.judging.verdicts import (
    POSITION_BANDS,
    DetectedObject,
    ObjectVerdict,
    Verdict,
    detect,
    judge,
    position_ok,
)

__all__ = [
    "DetectedObject",
    "ObjectVerdict",
    "Verdict",
    "POSITION_BANDS",
    "FEATURE_NAMES",
    "ShapeClassifier",
    "detect",
    "judge",
    "position_ok",
    "shape_features",
]
