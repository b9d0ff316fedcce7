"""hwconv: quantized CNN detectors with modified deformable convolutions on embedded FPGAs."""

__version__ = "0.1.0"
