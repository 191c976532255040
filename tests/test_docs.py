"""The docs stay true to the repository: every repo path docs/architecture.md names exists, and
README.md / docs/ link only inside the repository."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPS = ("vllm", "tests", "tools", "docs", "scripts", "sweeps")
# a repo-relative path: one of the top-level folders, then path characters
PATH_RE = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*)" % "|".join(TOPS))
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def named_paths(text: str) -> list[str]:
    return sorted({m.group(1).rstrip(".,;:") for m in PATH_RE.finditer(text)})


def test_architecture_paths_exist():
    text = (REPO / "docs" / "architecture.md").read_text()
    paths = named_paths(text)
    assert len(paths) > 30     # the document does name the code it describes
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_path_check_catches_a_missing_path():
    assert named_paths("see `vllm/v1/worker/state.py`, and vllm/config.py.") == \
        ["vllm/config.py", "vllm/v1/worker/state.py"]
    assert not (REPO / "vllm/v1/worker/state.py").exists()


@pytest.mark.parametrize("doc", ["README.md"] + [f"docs/{p.name}" for p in
                                                  sorted((REPO / "docs").glob("*.md"))])
def test_links_stay_inside_the_repository(doc):
    text = (REPO / doc).read_text()
    assert "../" not in text, f"{doc} points outside the repository"
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", text), \
        f"{doc} links to an outside site"
    for target in LINK_RE.findall(text):
        path = (REPO / doc).parent / target.split("#")[0]
        assert path.resolve().is_relative_to(REPO) and path.exists(), (doc, target)
