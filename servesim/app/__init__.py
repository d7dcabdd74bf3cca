"""The Streamlit dashboard: thin pages (``views/``, one script each; not ``pages/``, which streamlit would also list
on its own) over the simulator, hwmodels and the capacity planner.

Figures are built by plain functions in :mod:`servesim.app.figures` and the numbers behind them by
:mod:`servesim.app.analysis`, so tests call both directly; only ``views/``, ``dashboard.py``, ``knobs`` and
``cache`` import streamlit. Start it with ``servesim dashboard``.
"""
