"""The benchmark grid: which units and cells exist, where they run, what is finished."""
