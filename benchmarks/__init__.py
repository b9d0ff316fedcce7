"""Experiment drivers (not part of the hwconv library): run from the repository root as
``python -m benchmarks.<name>``; each writes its figures to the folder or file it is given.

train       float vs W4A8 AP50 of the tiny detector in a time budget (make bench-train)
ablation    AP50 per deformable-conv variant and sampling (make bench-ablation)
deepforest  config a on the DeepForest tree crowns, float vs W4A8 (make bench-deepforest)
integer     the integer path (golden model) vs the fake-quant path on a trained detector
"""
