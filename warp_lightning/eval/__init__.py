"""Evaluation: the protocol of WARP.md (protocol.py), statistics, the fronts, the report and its plots."""
