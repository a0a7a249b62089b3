"""What the suite and the benchmarks share: starting the app's processes, a fake clock."""
