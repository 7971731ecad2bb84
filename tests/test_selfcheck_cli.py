"""``python -m allspark.selfcheck --device cpu --quick``, as a user runs it on a new machine: every section
runs, every check passes here, the table and the JSON report are written."""
import json
import subprocess
import sys

from helpers import clean_env


def test_the_quick_selfcheck_passes_on_this_machine(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "allspark.selfcheck", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "all checks passed" in proc.stdout
    report = json.loads(out.read_text())
    sections = {r["section"] for r in report["rows"]}
    assert sections == {"environment", "numerics", "attention", "training", "distributed", "timings", "recommend"}
    assert report["failed"] == [] and report["timings"]
    results = {r["check"]: r["result"] for r in report["rows"]}
    assert results["several processes"] == "skip"
    assert sum(r["section"] == "training" and r["result"] == "pass" for r in report["rows"]) == 4
