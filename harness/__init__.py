"""What the tests and the benchmarks both need to drive edgechat for real: a `streamlit run` on a
free port, Debian's chromium, memory readings. Neither tests/ nor bench/ imports the other."""
