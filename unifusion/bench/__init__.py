"""Benchmarks that print a table and write JSON/figures (`unifusion bench <name>`); speed and accuracy targets live
here, never in the tests. `samplers`: every sampler on exact Gaussian-mixture oracles, optionally beside peers."""
