"""Cached simulation runs for the pages: the same scenario is simulated once per server process.

``st.cache_data`` keys a run by the scenario's JSON (files it names are content-addressed by
:mod:`servesim.app.inputs`, so a path stands for its bytes). A run that takes longer than a moment shows a
spinner with the time elapsed. (A progress bar drawn from inside the cached function would be recorded by
``st.cache_data`` for replay, and replaying it on a cache hit fails: its placeholder belongs to another run.)
"""

from __future__ import annotations

import os

import streamlit as st

from servesim.hwmodels.profile import Profile, load_profile
from servesim.sim.config import Scenario
from servesim.sim.deployment import Deployment, build_deployment
from servesim.sim.result import Result
from servesim.sim.simulator import simulate


@st.cache_data(max_entries=128, show_spinner=False)
def _simulate(scenario_json: str) -> Result:
    return simulate(Scenario.model_validate_json(scenario_json))


def run(scenario: Scenario, label: str = "Simulating") -> Result:
    """Simulate ``scenario`` (cached); InputError/ConfigError propagate for the page to show."""
    with st.spinner(f"{label}…", show_time=True):
        return _simulate(scenario.model_dump_json())


@st.cache_resource(max_entries=64, show_spinner=False)
def _deployment(scenario_json: str) -> Deployment:
    return build_deployment(Scenario.model_validate_json(scenario_json))


def deployment(scenario: Scenario) -> Deployment:
    """The resolved deployment (memory plan, cost model) of ``scenario`` (cached; treat it as read-only)."""
    return _deployment(scenario.model_dump_json())


@st.cache_resource(max_entries=8, show_spinner=False)
def _profile(path: str, mtime: float) -> Profile:
    return load_profile(path)


def profile(path: str) -> Profile:
    """A calibration profile read from ``path`` (cached until the file changes)."""
    return _profile(path, os.path.getmtime(path))
