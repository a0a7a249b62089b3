"""Small local servers that speak external HTTP APIs, for tests and benchmarks."""
