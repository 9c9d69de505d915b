"""The parts of `benchmarks/fault_injection.py` (kill -9 `meanflow train` / `sample`, resume, compare)."""
