"""Rotation-equivariant segmentation of whole-slide histopathology images.

Data flows one way through the subpackages:

``slides`` (read, find tissue, plan tiles) -> ``inference`` (predict, stitch)
-> ``outputs`` (OME-TIFF, GeoJSON, overlays). The models in ``models`` are
built from ``layers``, which are built from ``groups``. ``training`` sits
beside ``inference`` and uses the same models and slides.

Coordinates: every position on a slide is ``(x, y)`` in level-0 pixels and
every size is ``(width, height)``, as in OpenSlide. Arrays are indexed
``[row, col]``, so an image region is ``(height, width, channels)``.
"""

__version__ = "0.1.0"
