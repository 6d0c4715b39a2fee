"""Tab 1, Prompt → CLIP: tokenisation, the CLIP contrastive pseudocode with live values, zero-shot, U-Net input, and a
tiny CLIP trained live.

- :mod:`.forms`: the tab's settings and the named values its handlers return.
- :mod:`.views`: the slot chips, pseudocode listing, tables and summaries the handlers show (formatting only).
- :mod:`.handlers`: :class:`ClipTab`, the handlers (tokenize, CLIP batch, zero-shot, text states, live training).
- :mod:`.layout`: the tab's sections and their events.
"""

from demo.tab_clip.handlers import ClipTab

__all__ = ["ClipTab"]
