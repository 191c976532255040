"""Profiling tools for NWOR / SCV: the microbench, Nsight Compute helpers, the SCV benefit study.

Run the scripts from the repository root (``python tools/profiling/run_nwor_microbench.py``);
the modules import each other as ``tools.profiling.*``. See docs/profiling.md."""
