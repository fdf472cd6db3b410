"""Experiment generator and results tables (DLAE's experiment generators, manual section 11).

:mod:`ctdl.experiments.sweep` expands a sweep file into runs and trains them in subprocesses;
:mod:`ctdl.experiments.results` ranks the run folders' ``summary.json`` into one table.
Nothing heavy is imported here, so ``ctdl --help`` stays fast.
"""
