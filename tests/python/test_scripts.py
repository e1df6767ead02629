"""The quick start's Python on a fresh machine (scripts/python_env.sh, sourced by setup.sh, quickstart.sh and
test.sh): a system Python that refuses pip installs (PEP 668, Debian 12) gets the checkout's venv .venv, made
once; any other Python, an active venv or PYTHON is used as it is."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "scripts", "python_env.sh")
SYSTEM_PYTHON = "/usr/bin/python3"


def _externally_managed(python: str) -> bool:
    if not os.access(python, os.X_OK):
        return False
    out = subprocess.run([python, "-c", "import os, sys, sysconfig; print(sys.prefix != sys.base_prefix or "
                          "not os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"],
                         capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "False"


def _source(folder, environment) -> list:
    """python3 as a script sees it after sourcing python_env.sh in `folder`, and VIRTUAL_ENV."""
    out = subprocess.run(["bash", "-c", "set -euo pipefail; . scripts/python_env.sh; command -v python3; "
                          "echo \"${VIRTUAL_ENV:-none}\""], cwd=folder, env=environment, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[-2:]  # after the script's own lines


@pytest.fixture
def checkout(tmp_path):
    os.makedirs(tmp_path / "scripts")
    shutil.copy(SCRIPT, tmp_path / "scripts")
    return tmp_path


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
@pytest.mark.skipif(not _externally_managed(SYSTEM_PYTHON), reason=f"{SYSTEM_PYTHON} does not refuse pip (PEP 668)")
def test_a_system_python_refusing_pip_gets_the_checkout_venv_made_once(checkout):
    environment = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    python, venv = _source(checkout, environment)
    assert python == str(checkout / ".venv" / "bin" / "python3") and venv == str(checkout / ".venv")
    pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and str(checkout / ".venv") in pip.stdout  # pip installs go into the venv
    made = os.stat(checkout / ".venv" / "pyvenv.cfg").st_mtime_ns
    assert _source(checkout, environment) == [python, venv]
    assert os.stat(checkout / ".venv" / "pyvenv.cfg").st_mtime_ns == made  # not made again
    # PYTHON, or a venv already active, is used as it is.
    assert _source(checkout, {**environment, "PYTHON": SYSTEM_PYTHON}) == [SYSTEM_PYTHON, "none"]
    other = str(checkout / "other")
    assert _source(checkout, {**environment, "VIRTUAL_ENV": other}) == [SYSTEM_PYTHON, other]


def test_a_python_that_takes_pip_installs_is_used_as_it_is(checkout):
    """This interpreter (CI's) when it takes pip installs; a venv's interpreter always does."""
    python = sys.executable
    if _externally_managed(python):
        pytest.skip(f"{python} refuses pip installs")
    folder = os.path.dirname(python)
    environment = {"PATH": f"{folder}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    found, venv = _source(checkout, environment)
    assert os.path.dirname(found) == folder and venv == "none" and not (checkout / ".venv").exists()
