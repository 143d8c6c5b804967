"""The benchmark grid: which units and cells exist, where they run, what is finished, the lock
that keeps one writer per run folder, and the progress line."""
