"""Sweeps: grids of recipes (sampler × steps × guidance × seeds …) run into a folder and scored.

spec.py (the TOML spec, every cell a validated Recipe) → driver.py (what is missing, written as it
finishes) with an executor: local.py (worker processes, the default) or ray_exec.py (a Ray
cluster); each worker is worker.py (one model load, metrics.py per cell); cells.py keeps one
folder per cell; summary.py and report.py make the tables and figures; cli.py is ``studio sweep``.
"""
