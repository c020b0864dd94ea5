#!/usr/bin/env bash
# Installs flrunner and its test extras into a fresh virtual environment, then runs the test
# suite. Extra arguments go to pytest. Exits non-zero if any test fails or if no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${FLRUNNER_TEST_VENV:-.venv-test}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
set +e
"$venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
