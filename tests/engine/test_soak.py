"""
The soak run (benchmarks/soak.py): 2000 iterations of the demo config with an evaluation
every 500. Slow (15 minutes to hours, depending on the machine): run with `pytest -m slow`.
"""

import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.mark.slow
def test_soak_memory_files_and_repeated_evaluation(tmp_path, shapes_root):
    report_file = tmp_path / "soak.json"
    # One thread: on a shared or small machine, more threads only slow training down.
    env = dict(os.environ, SSD_D2_DATASETS=str(shapes_root), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "benchmarks.soak", "--output-dir", str(tmp_path / "out")]
    result = subprocess.run(
        command + ["--json", str(report_file)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=6 * 3600,
    )  # fmt: skip
    assert report_file.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["iterations"] == 2000 and report["eval_period"] == 500
    # Resident memory after the last evaluation within 10% of that after the first.
    assert abs(report["rss_change"]) <= 0.10, report["rss_change"]
    # No file, socket or pipe left open.
    assert report["open_fds_change"] <= 0, report["open_fds_change"]
    assert report["checks"]["repeated_evaluations_identical"]
    assert report["checks"]["evaluation_equals_training_evaluation"]
    assert result.returncode == 0
