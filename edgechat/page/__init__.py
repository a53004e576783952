"""The page layer: Streamlit layout pieces that web_demo.py puts together (imports streamlit)."""
