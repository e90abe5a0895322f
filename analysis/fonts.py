"""Font fallback for figures: DejaVu, then Noto CJK (Debian package `fonts-noto-cjk`) for Korean glyphs.

Without that font installed nothing fails: the families stay DejaVu only and matplotlib warns of missing glyphs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib import font_manager

#: fonts tried after DejaVu for glyphs it lacks (Korean): the Noto CJK faces of `fonts-noto-cjk`
CJK_SANS = ("Noto Sans CJK KR", "Noto Sans CJK JP", "Noto Sans CJK SC")
CJK_MONO = ("Noto Sans Mono CJK KR", "Noto Sans Mono CJK JP", "Noto Sans Mono CJK SC")


def _installed(families) -> list[str]:
    names = {e.name for e in font_manager.fontManager.ttflist}
    return [f for f in families if f in names]


def use_font_fallback() -> list[str]:
    """Put the installed Noto CJK fonts after DejaVu in matplotlib's families; return the CJK families found.

    matplotlib caches its font list, so a font installed after the cache was built is added here from the
    system's font files.
    """
    if not _installed(CJK_SANS + CJK_MONO):
        try:
            for path in font_manager.findSystemFonts():
                if "CJK" in Path(path).name and "Serif" not in Path(path).name:
                    font_manager.fontManager.addfont(path)
        except (OSError, RuntimeError, ValueError):  # an unreadable font file: keep the fonts there are
            pass
    sans = _installed(CJK_SANS)
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *sans]
    matplotlib.rcParams["font.monospace"] = mono_families()
    return sans + _installed(CJK_MONO)


def mono_families() -> list[str]:
    """A monospace family list with fallbacks: matplotlib's generic `monospace` resolves to one font only, so
    text that may hold Korean names these families (`family=mono_families()`)."""
    return ["DejaVu Sans Mono", *(_installed(CJK_MONO) or _installed(CJK_SANS))]
