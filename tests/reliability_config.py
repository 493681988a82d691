"""The shared run of test_reliability.py as a config file (for the CLI)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_reliability import base_config  # noqa: E402


def get_config():
    return base_config()
