"""Lab tools: node processes for tests and benchmarks, the demo, synthetic data.

DCMTK drivers and the Numba warm-up too.  Never imported by a running node.
"""
