"""Kernels: pure computations and stores (similarity, spectra, statistics, metrics, loss, I/O).

The bottom layer: imports nothing else of ftdrift."""
