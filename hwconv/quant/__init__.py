"""Quantization pipeline: Brevitas layers, deformable-conv variants, detectors, data, training, export."""
