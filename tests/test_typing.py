"""The public API's annotations: ``mypy --strict`` passes on typical user code
(tests/typing_usage.py), and ``mypy kvmm`` passes with pyproject.toml's settings."""

import os
import runpy
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE = os.path.join("tests", "typing_usage.py")


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args],
                          cwd=ROOT, capture_output=True, text=True, check=False)


def test_typical_user_code_passes_mypy_strict():
    done = _mypy("--strict", USAGE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def test_the_package_passes_mypy_with_its_settings():
    done = _mypy("kvmm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


def test_wrong_types_are_reported(tmp_path):
    """The annotations say something: a str key, a str value and a misused result
    are errors, not Any."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import kvmm\n"
        "env = kvmm.open('x')\n"
        "with env.begin(write=True) as txn:\n"
        "    txn.put('key', b'v')\n"
        "    value: int = txn.get(b'key')\n"
        "    env.open_db(b'db', dupsrt=True)\n"
    )
    done = _mypy("--strict", str(bad))
    assert done.returncode == 1
    assert 'incompatible type "str"' in done.stdout
    assert "Incompatible types in assignment" in done.stdout
    assert '"dupsrt"' in done.stdout


def test_the_usage_file_runs():
    runpy.run_path(os.path.join(ROOT, USAGE), run_name="__main__")
