"""torch.compile(opt.step) in a fresh process breaks the graph no more often than torch's fused
AdamW (issue 20 item 4): AdamHD loads its kernel at construction, and the loader runs outside any
traced region, so dynamo never traces hashing, file opens, locks or ``register_fake``."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_first_compiled_steps_in_a_fresh_process(cpu_kernel):
    script = Path(__file__).with_name("compile_breaks_check.py")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["adamhd_fused"]
    assert 1 <= out["adamhd"] <= out["adamw"], out
