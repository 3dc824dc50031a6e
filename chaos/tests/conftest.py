import sys
from pathlib import Path

# The harness's modules are top-level modules of chaos/ (run as `python chaos/run.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
