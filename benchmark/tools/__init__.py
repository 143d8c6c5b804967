"""Developer tools: throughput measurement (perf) and the new-method scaffold."""
