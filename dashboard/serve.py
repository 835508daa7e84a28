"""Script entry for ``streamlit run`` when metalab is installed without its source tree (``metalab dashboard``)."""

from metalab.dashboard.app import main

main()
