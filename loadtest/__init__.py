"""City generator, traffic replay, benchmarks and reports."""
