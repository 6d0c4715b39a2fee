"""Tab 3, Denoise & attend: stream a generation, then explore its cross-attention maps, film and Q/K/V shapes.

- :mod:`.forms`: the tab's settings, input parsing, and the named values its handlers take and return.
- :mod:`.views`: the texts and galleries the handlers show (formatting only).
- :mod:`.handlers`: :class:`AttendTab`, the handlers (generate, stop, maps, qkv, export, presets, permalinks).
- :mod:`.classroom`: :class:`~.classroom.Classroom` (``AttendTab.classroom``): score a painted mask against a word's
  map, take one step's guidance apart.
- :mod:`.layout`: the tab's sections and their events; :mod:`.layout_classroom`: the classroom sections'.
"""

from demo.tab_attend.forms import DEFAULTS
from demo.tab_attend.handlers import AttendTab

__all__ = ["AttendTab", "DEFAULTS"]
