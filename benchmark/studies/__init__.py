"""Studies around the grid: hyper-parameter tuning (optuna) and ablation grids."""
