"""Profiling tools for NWOR / SCV: the microbench, Nsight Compute helpers, the SCV benefit study.

Run the scripts as modules from the repository root
(``python3 -m tools.profiling.run_nwor_microbench ...``); shared helpers are in tools/common.py.
See docs/profiling.md."""
