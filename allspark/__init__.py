"""AllSpark (CVPR 2024): semi-supervised semantic segmentation, a faithful re-implementation."""
__version__ = "0.1.0"
