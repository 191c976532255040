"""tools/device/run.sh on a copy of its files: it dispatches to any suite file, passes the
suite its arguments and environment, and packs the results even when the suite fails; and the
tools import without sys.path edits."""
import ast
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "tools" / "device", root / "tools" / "device")
    shutil.copy(REPO / "tools" / "device_common.sh", root / "tools" / "device_common.sh")
    return root


def _run(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["OUT"] = str(out)
    return subprocess.run(["bash", str(root / "tools/device/run.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_every_suite_says_what_it_measures_and_parses():
    suites = sorted((REPO / "tools/device/suites").glob("*.sh"))
    assert {"tests", "decode", "spec", "nwor", "ncu", "tp2"} <= {s.stem for s in suites}
    for s in suites:
        assert "# what: " in s.read_text(), s
        assert subprocess.run(["bash", "-n", str(s)]).returncode == 0, s


def test_dispatches_to_any_suite_file_and_packs_results(tmp_path):
    root = _tree(tmp_path)
    # a suite nobody told run.sh about: it only has to be a file in suites/
    (root / "tools/device/suites/probe.sh").write_text(
        '# what: a probe\n'
        'echo "args=$*" > "$R/args.txt"\n'
        'step 5 true\n'
        'have_gguf || echo "no gguf" >> "$R/args.txt"\n'
        'exit 7\n')
    out = tmp_path / "out"
    p = _run(root, out, "probe", "a", "b c")
    assert p.returncode == 7, p.stdout + p.stderr          # the suite's own status
    assert "== rc=0" in p.stdout                             # `step` reached the suite
    with tarfile.open(out / "probe.tar.gz") as tar:          # packed although it failed
        text = tar.extractfile("probe/args.txt").read().decode()
    assert text == "args=a b c\nno gguf\n"
    listing = _run(root, out, "--list")
    assert listing.returncode == 0 and "probe" in listing.stdout and "a probe" in listing.stdout


def test_unknown_suite_is_an_error_that_lists_the_suites(tmp_path):
    p = _run(_tree(tmp_path), tmp_path / "out", "no_such_suite")
    assert p.returncode == 2
    assert "unknown suite 'no_such_suite'" in p.stderr and "tests" in p.stderr


def test_tools_do_not_edit_sys_path():
    owned_elsewhere: set[str] = set()
    offenders = []
    for f in sorted((REPO / "tools").rglob("*.py")):
        rel = str(f.relative_to(REPO))
        if rel in owned_elsewhere or rel.startswith("tools/roofline/"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                offenders.append(rel)
    assert not offenders, offenders
    assert (REPO / "tools/__init__.py").exists() and (REPO / "tools/benchmarks/__init__.py").exists()


def test_a_tool_runs_as_a_module_from_the_repository_root():
    p = subprocess.run(["python3", "-m", "tools.profiling.sweep_summary", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage" in p.stdout.lower(), p.stderr
