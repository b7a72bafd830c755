"""tools/bootstrap.sh on a disk too small for torch: it stops before pip, naming the problem."""
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bootstrap_refuses_when_disk_is_short(tmp_path):
    (tmp_path / "tools").mkdir()
    shutil.copy(os.path.join(REPO, "tools", "bootstrap.sh"), tmp_path / "tools" / "bootstrap.sh")
    env = dict(os.environ, GKD_BOOTSTRAP_NEED_GB="100000000")  # more than any disk has
    proc = subprocess.run(["bash", str(tmp_path / "tools" / "bootstrap.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "installing torch needs about 100000000 GB free" in proc.stderr
    assert "MB free" in proc.stderr and "GKD_BOOTSTRAP_NEED_GB=0" in proc.stderr
    assert "installing torch 2.14.1" not in proc.stdout  # pip was never started
    assert not (tmp_path / ".venv" / ".gkd_d2_bootstrap_done").exists()
