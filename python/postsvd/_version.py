"""The package's version: the installed distribution's, else the source tree's."""
try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("postsvd")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
