"""A link emulator (rate, RTT, loss, resets) for tests and benchmarks."""
