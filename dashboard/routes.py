"""The dashboard's pages as ``st.Page`` objects, made on demand so pages can link to one another.

Streamlit identifies a page by its URL path, so two ``st.Page`` objects made by the same factory name the same
page: ``st.switch_page(report_page(), query_params={"run": run_id})`` opens a run's report from anywhere.
"""

from __future__ import annotations

import streamlit as st


def home_page() -> st.Page:
    from . import pages

    return st.Page(pages.home, title="Home", icon=":material/home:", url_path="home", default=True)


def plugins_page() -> st.Page:
    from . import pages

    return st.Page(pages.plugins, title="Plugins", icon=":material/extension:", url_path="plugins")


def train_page() -> st.Page:
    from . import train

    return st.Page(train.train, title="Train", icon=":material/rocket_launch:", url_path="train")


def runs_page() -> st.Page:
    from . import runs

    return st.Page(runs.runs, title="Runs", icon=":material/monitoring:", url_path="runs")


def compare_page() -> st.Page:
    from . import runs

    return st.Page(runs.compare, title="Compare", icon=":material/compare_arrows:", url_path="compare")


def sweeps_page() -> st.Page:
    from . import sweeps

    return st.Page(sweeps.sweeps, title="Sweeps", icon=":material/tune:", url_path="sweeps")


def report_page() -> st.Page:
    from . import report

    return st.Page(report.run_report, title="Run report", icon=":material/description:", url_path="report")


def datasets_page() -> st.Page:
    from . import datasets

    return st.Page(datasets.datasets, title="Datasets", icon=":material/folder_open:", url_path="datasets")


def predict_page() -> st.Page:
    from . import predict

    return st.Page(predict.predict, title="Predict", icon=":material/online_prediction:", url_path="predict")


def all_pages() -> list[st.Page]:
    """Every page in navigation order."""
    return [home_page(), plugins_page(), datasets_page(), train_page(), runs_page(), compare_page(), sweeps_page(),
            predict_page(), report_page()]
