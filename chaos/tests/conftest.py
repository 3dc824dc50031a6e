import sys
from pathlib import Path

# The harness's modules are top-level modules of chaos/ (run as `python chaos/run.py`).
# Appended, not put first: bench/ has a `run` module of its own, which bench's tests import;
# no chaos test imports chaos's `run`, and its other module names are its own.
sys.path.append(str(Path(__file__).resolve().parents[1]))
