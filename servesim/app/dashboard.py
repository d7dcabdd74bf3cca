"""The dashboard's entry script (``servesim dashboard`` runs it with ``streamlit run``): page navigation."""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent
PAGES = (
    ("what_if.py", "What-if", ":material/tune:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("capacity.py", "Capacity", ":material/savings:"),
    ("validation.py", "Validation", ":material/fact_check:"),
    ("calibration.py", "Calibration", ":material/speed:"),
)

st.set_page_config(page_title="servesim", page_icon=":material/dns:", layout="wide")
page = st.navigation([st.Page(HERE / "views" / f, title=t, icon=i, default=f == "what_if.py") for f, t, i in PAGES],
                     position="top")
page.run()
