"""Writers for the files that viewers open: pyramidal OME-TIFF, GeoJSON and PNG overlays."""
