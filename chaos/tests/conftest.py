import sys
from pathlib import Path

# The harness's modules are top-level modules of chaos/ (run as `python chaos/run.py`), and it
# reuses bench/stack.py.
HERE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent / "bench")]
