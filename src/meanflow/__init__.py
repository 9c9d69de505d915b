"""meanflow: one-step generative modelling with MeanFlow and its peers.

Convention everywhere: t = 0 is data, t = 1 is noise, z_t = (1 - t) x + t e, v = e - x.
"""

__version__ = "0.1.0"
