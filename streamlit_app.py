"""metalab's dashboard: the Streamlit router (``streamlit run streamlit_app.py`` or ``metalab dashboard``)."""

from metalab.dashboard.app import main

main()
