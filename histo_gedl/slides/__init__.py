"""Read slides, find tissue and plan tiles.

:func:`open_slide` opens a whole-slide image or an image tile through
OpenSlide, tifffile or Pillow and returns a :class:`Slide`, whose
:meth:`Slide.read_region` reads any rectangle at a requested resolution in
micrometres per pixel (mpp). :func:`detect_tissue` finds tissue at low
resolution, :func:`plan_tiles` lays a grid of tiles over the slide and
:func:`write_tiles` writes them to a folder.
"""

from histo_gedl.slides.slide import Slide, open_slide
from histo_gedl.slides.tiling import TilePlan, plan_tiles, write_tiles
from histo_gedl.slides.tissue import TissueMask, detect_tissue

__all__ = [
    "Slide",
    "TilePlan",
    "TissueMask",
    "detect_tissue",
    "open_slide",
    "plan_tiles",
    "write_tiles",
]
