"""Refining a segmentation with the image: ours (exact low-rank Potts G-CRF) vs pydensecrf2.

Run ``python -m benchmarks.refine`` (:mod:`benchmarks.refine.job`).
"""
