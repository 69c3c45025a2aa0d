"""Model inference on whole slides: prediction, stitching and post-processing."""
