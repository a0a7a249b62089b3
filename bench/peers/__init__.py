"""Side by side with a peer: the same human-approval workload on LangGraph and on Caliber.

`make bench-peers` (python -m bench.peers). The peer is an optional extra
(`pip install -e '.[peers]'`); neither the app nor its tests need it.
"""
