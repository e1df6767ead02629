# Sourced (not run) by setup.sh, quickstart.sh and test.sh: chooses the Python that postsvd is
# installed into and tested with, so that the quick start works on a fresh machine as it is.
#
# PYTHON, when set, or an active virtual environment (VIRTUAL_ENV) is used as it is. Otherwise
# python3 on the PATH, unless it is a system Python that refuses pip installs outside a virtual
# environment (PEP 668: an EXTERNALLY-MANAGED file beside its standard library, as on Debian 12
# and recent Ubuntu): then the virtual environment .venv of this checkout, made on the first run
# (apt installs python3-venv where it is missing) and put first on the PATH for the rest of the
# script and what it starts. Activate it yourself afterwards with `. .venv/bin/activate`.

postsvd_apt_install() {  # apt-get install "$@" (as root, or through sudo where there is one), saying so
  local sudo=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then sudo="sudo"; fi
  echo "[setup] apt-get install $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

postsvd_python_version() {  # "3.11" for the Python "$1": Debian's per-version packages (python3.11-dev, ...)
  "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'
}

postsvd_externally_managed() {  # exit 0 when "$1" is a system Python outside any venv that refuses pip
  "$1" - <<'EOF' 2>/dev/null
import os, sys, sysconfig
inside_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if not inside_venv and os.path.exists(marker) else 1)
EOF
}

if [ -z "${PYTHON:-}" ] && [ -z "${VIRTUAL_ENV:-}" ] && postsvd_externally_managed python3; then
  postsvd_venv="$(pwd)/.venv"
  if [ ! -x "$postsvd_venv/bin/python3" ]; then
    echo "[setup] python3 is the system's and refuses pip installs (PEP 668): making the virtual environment .venv"
    if ! python3 -m venv "$postsvd_venv" >/dev/null 2>&1; then
      rm -rf "$postsvd_venv"
      postsvd_apt_install python3-venv "python$(postsvd_python_version python3)-venv"
      python3 -m venv "$postsvd_venv"
    fi
  fi
  export VIRTUAL_ENV="$postsvd_venv"
  export PATH="$postsvd_venv/bin:$PATH"
  echo "[setup] using the virtual environment .venv (afterwards: . .venv/bin/activate)"
fi
