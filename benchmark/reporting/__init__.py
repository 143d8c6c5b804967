"""Reports of a run folder: cells collected, statistics, tables and figures (no training code)."""
