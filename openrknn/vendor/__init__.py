"""Export target: openrknn decides the quantization, the vendor toolkit (in its own Python) only compiles it.

Nothing here imports the vendor toolkit: export.py starts the vendor's interpreter on runner.py with a JSON job.
"""

from .env import VendorPython, VendorToolkitError, find_vendor_python, setup_venv
from .export import VendorExport, export_vendor, run_post

__all__ = ["VendorExport", "VendorPython", "VendorToolkitError", "export_vendor", "find_vendor_python", "run_post",
           "setup_venv"]
