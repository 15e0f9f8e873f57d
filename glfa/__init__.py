"""glfa: cross-subject fMRI-to-video decoding with Global-Local Functional Alignment."""

__version__ = "0.1.0"
