"""Live monitoring of a running capture: next-frame prediction, anomaly alerts and the dashboard.

The layout of a monitor folder (``OUT/<run-id>.monitor/``) is documented in ``docs/monitor.md``.
"""
