#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment, and runs the README's
# Python quickstart from a temporary directory, outside the checkout, so that `import
# immujax` can only resolve to the installed wheel. Fails on any error, if immujax is
# imported from anywhere but the new venv, if the installed version differs from
# immujax/__init__.py, or if the quickstart prints no RIR.
#
# Usage (from anywhere): bash .ci/check_wheel.sh. Needs python3 >= 3.11 and the package
# registry (the build backend and the dependencies are installed with pip; pip's cache may
# serve them, which does not affect the check: the immujax wheel itself is always the one
# built here, installed from its path).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

python3 -m venv "$tmp/build-env"
"$tmp/build-env/bin/pip" install -q build
"$tmp/build-env/bin/python" -m build --wheel --outdir "$tmp/dist" "$root" > "$tmp/build.log" 2>&1 \
  || { cat "$tmp/build.log"; exit 1; }
wheel="$(ls "$tmp"/dist/immujax-*.whl)"
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
stray = sorted({n.split("/")[0] for n in names} - {"immujax"} - {n.split("/")[0] for n in names if ".dist-info/" in n})
if stray or not any(n.startswith("immujax/deep/") for n in names):
  sys.exit(f"unexpected wheel layout: top-level {stray}")
PY
echo "wheel: built $(basename "$wheel") (the immujax package only)"

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$wheel"

# The first ```python block of the README, verbatim.
python3 - "$root/README.md" > "$tmp/quickstart.py" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
if not blocks:
  sys.exit("README.md has no ```python block")
print(blocks[0], end="")
PY

mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
expected="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/immujax/__init__.py")"
"$tmp/venv/bin/python" - "$tmp/venv" "$expected" <<'PY'
import pathlib, sys
import immujax
venv, expected = pathlib.Path(sys.argv[1]).resolve(), sys.argv[2]
where = pathlib.Path(immujax.__file__).resolve()
if venv not in where.parents:
  sys.exit(f"immujax was imported from {where}, not from the wheel installed in {venv}")
if immujax.__version__ != expected:
  sys.exit(f"installed immujax {immujax.__version__}, but immujax/__init__.py says {expected}")
print(f"wheel: immujax {immujax.__version__} imported from {where.parent}")
PY
"$tmp/venv/bin/python" "$tmp/quickstart.py" | tee "$tmp/quickstart.out"
grep -q "^RIR " "$tmp/quickstart.out" || { echo "wheel: the quickstart printed no RIR"; exit 1; }
echo "wheel: the README quickstart ran from the installed wheel outside the checkout ($((SECONDS - start)) s)"
