"""Tools around a run: throughput and audits (perf), the new-method scaffold, encoder export, and
the test-set-size simulation (ci_width)."""
