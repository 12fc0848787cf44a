"""openrknn: an open, pure-Python deployment toolkit for Rockchip NPUs with the RKNN-Toolkit API."""

__version__ = "0.1.0"
