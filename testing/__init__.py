"""The test and benchmark rig (repository only, not installed): private sound servers,
external observers, harnesses shared by ``tests/`` and ``bench/``."""
