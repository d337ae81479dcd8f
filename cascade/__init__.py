"""cascade: arbitrary-scale super-resolution (LAINR) + cascaded SR3 diffusion stages."""

__version__ = "0.1.0"
