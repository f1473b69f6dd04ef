"""The installed distribution exposes only ``svgd_rewrite`` (the repository's cli/ and
fixtures/ folders are its subpackages; benchmarks/ is not installed) and its console script."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_wheel_installs_only_svgd_rewrite(tmp_path):
    # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "svgd_example", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("svgd_rewrite-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"svgd_rewrite"}

    # A fresh venv that sees this machine's TensorFlow (system site-packages) but not the
    # checkout: what the wheel adds to site-packages, and that its entry points run.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    before = set(os.listdir(site))
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=300)
    added = set(os.listdir(site)) - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"svgd_rewrite"}, added
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cmd in ([str(venv / "bin" / "svgd-rewrite"), "--version"],
                [str(python), "-m", "svgd_rewrite", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=300)
        assert proc.returncode == 0 and proc.stdout.startswith("svgd-rewrite "), proc.stderr
    # --example needs the fixtures, now inside the package; cli/fixtures are not top-level.
    probe = ("import importlib.util as u, svgd_rewrite.fixtures.saved_models, svgd_rewrite.cli.main;"
             "print(u.find_spec('cli'), u.find_spec('fixtures'), u.find_spec('benchmarks'))")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["None", "None", "None"], proc.stderr
