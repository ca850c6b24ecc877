"""Benchmarks of fernvault against a hand-written floor and SQLAlchemy-Utils.

``python -m bench`` runs them; ``docs/benchmarks.md`` describes what is
measured and records the results.
"""
