"""What several test modules share: synthetic datasets, the toy model, the training runner,
multi-process utilities, tiny encoder packages and golden-file reading.

Tests import these as `from tests.helpers import NAME`: pytest puts the repository root on the
path (tests/ is a package), and subprocesses get it through PYTHONPATH.
"""
