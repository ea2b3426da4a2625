"""Run a check script of this folder under Triton's interpreter (TRITON_INTERPRET=1) in a
subprocess (the variable must be set before triton is imported) and return its RESULT line."""

import json
import os
import subprocess
import sys
from pathlib import Path


def run_interpreted(script_name: str, cases: list[dict], **env: str) -> dict:
    script = Path(__file__).with_name(script_name)
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", **env,
               PYTHONPATH=os.pathsep.join([str(root), str(root / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])
