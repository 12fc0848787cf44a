"""openrknn: an open, pure-Python deployment toolkit for Rockchip NPUs with the RKNN-Toolkit API."""

__version__ = "0.1.0"


def sweep(config, out_dir="sweep-out", workers=None, ray=None, progress=True, base=None):
    """Quantization sweep: every configuration of a sweep YAML (or dict) built and evaluated; returns a
    SweepResult (table, Pareto front, recommendation per chip). See openrknn.sweep.sweep."""
    from .sweep import sweep as run

    return run(config, out_dir, workers, ray, progress, base)
