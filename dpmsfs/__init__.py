"""dpmsfs: a versioned FUSE file system for the work directories of test equipment."""

__version__ = "0.1.0"
