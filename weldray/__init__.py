"""weldray: weld photos to a served good_weld / bad_weld classifier, on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("weldray")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
