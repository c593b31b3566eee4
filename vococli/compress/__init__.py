"""Compressing a video: pixels, stage 1 (frames to their kept keys/values), and the pipeline that
writes the cache."""
