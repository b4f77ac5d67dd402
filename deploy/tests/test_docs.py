"""README.md, docs/ and the other READMEs stay runnable as written: the README
is short, every `make` target and every variable they name is real, every
metric is one the API declares, every link and repository path resolves, and
the results index is what `make publish-results` writes. (The configuration table is checked
against the code by api/tests/readme.rs.)"""

import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PUBLISH = REPO / "scripts/publish_results.py"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The other READMEs, checked the same way.
ALSO = [
    REPO / "loadtest/results/README.md",
    REPO / "loadtest/README.md",
    REPO / "deploy/e2e/README.md",
    *sorted((REPO / "deploy/components").glob("*/README.md")),
]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=")
METRIC = re.compile(r"\bread_api_[a-z_]*[a-z]\b")
REPO_PATH = re.compile(r"^(?:api|deploy|docs|loadtest|scripts)/[\w./-]*$")


def page_id(path):
    return str(path.relative_to(REPO))


def code(path):
    """Every fenced block's lines and every inline code span of a page."""
    text = path.read_text()
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return lines + INLINE.findall(FENCE.sub("", text))


def commands(path):
    """(words before make, words after make) for every make command in a page's code."""
    found = []
    for snippet in code(path):
        for part in re.split(r"&&|\|\||;|\|", snippet):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                words = part.split()
            if "make" in words:
                at = words.index("make")
                found.append((words[:at], words[at + 1 :]))
    return found


def makefile_targets():
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z0-9][a-zA-Z0-9_-]*):", text, re.M))


def tracked_sources():
    """The text of every tracked file that is not documentation: where a variable must be read."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return "\n".join(
        (REPO / f).read_text(errors="ignore") for f in files if not f.endswith(".md") and (REPO / f).is_file()
    )


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_command_parser_reads_the_readme():
    named = {word for _, after in commands(REPO / "README.md") for word in after}
    assert {"demo", "test", "deploy-sidecar", "undeploy", "PURGE=1"} <= named, named


def test_the_readme_links_every_page_of_docs():
    linked = {(REPO / target).resolve() for target in LINK.findall((REPO / "README.md").read_text())}
    unlinked = sorted(page_id(page) for page in DOCS[1:] if page.resolve() not in linked)
    assert not unlinked, f"README.md links no {unlinked}: add a row to its Documentation table"


def test_the_readme_stays_within_300_lines():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("path", DOCS + ALSO, ids=page_id)
def test_every_make_target_named_exists(path):
    targets = makefile_targets()
    named = {word for _, after in commands(path) for word in after if not ASSIGNMENT.match(word)}
    named = {w for w in named if not w.startswith("-") and w != "…"}
    # `make deploy-*` names a family of targets: at least one must exist.
    missing = {w for w in named if not fnmatch.filter(targets, w)}
    assert not missing, f"{page_id(path)} names targets the Makefile lacks: {sorted(missing)}"


@pytest.mark.parametrize("path", DOCS + ALSO, ids=page_id)
def test_every_variable_set_in_a_command_is_read_somewhere(path):
    sources = tracked_sources()
    variables = {
        m[1]
        for snippet in code(path)
        for word in (shlex.split(snippet, comments=True) if snippet.count("'") % 2 == 0 else snippet.split())
        if (m := ASSIGNMENT.match(word))
    }
    unread = sorted(v for v in variables if not re.search(rf"\b{v}\b", sources))
    assert not unread, f"{page_id(path)} sets variables nothing reads: {unread}"


def test_every_metric_named_is_declared_and_every_declared_one_is_documented():
    declared = set(re.findall(r'"(read_api_[a-z_]+)"', (REPO / "api/src/metrics.rs").read_text()))
    assert len(declared) > 10, declared
    named = {m for path in DOCS for m in METRIC.findall(path.read_text())}
    assert not named - declared, f"the docs name metrics the API does not declare: {sorted(named - declared)}"
    reference = set(METRIC.findall((REPO / "docs/http-api.md").read_text()))
    assert not declared - reference, f"docs/http-api.md lacks {sorted(declared - reference)}"


@pytest.mark.parametrize("path", DOCS + ALSO, ids=page_id)
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{page_id(path)}: broken links {broken}"


@pytest.mark.parametrize("path", DOCS + ALSO, ids=page_id)
def test_every_repository_path_named_exists(path):
    named = {span.rstrip("/") for span in code(path) if REPO_PATH.match(span)}
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{page_id(path)} names paths that do not exist: {missing}"


def test_the_results_index_is_what_publish_results_writes():
    index = subprocess.run(
        [sys.executable, PUBLISH, "--print-index"], capture_output=True, text=True, check=True
    ).stdout
    assert (REPO / "loadtest/results/README.md").read_text() == index, (
        "loadtest/results/README.md differs from what make publish-results writes: run "
        "`python3 scripts/publish_results.py --print-index > loadtest/results/README.md`"
    )


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A git repository with one commit and a replay report under target/, as make replay leaves it."""
    git(tmp_path, "init", "-q")
    (tmp_path / "code.txt").write_text("v1\n")
    git(tmp_path, "add", "code.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "code")
    run = tmp_path / "target/replay"
    run.mkdir(parents=True)
    (run / "report.md").write_text("# make replay\n\n| pods | served |\n| 1 | 1234 |\n\n![ladder](ladder.svg)\n")
    (run / "ladder.svg").write_text("<svg/>")
    return tmp_path


def publish(repo, *names):
    return subprocess.run([sys.executable, PUBLISH, "--repo", repo, *names], capture_output=True, text=True)


def test_publish_results_copies_a_report_with_its_date_commit_and_images(checkout):
    result = publish(checkout)
    assert result.returncode == 0, result.stderr
    published = (checkout / "loadtest/results/replay.md").read_text().splitlines()
    commit = git(checkout, "rev-parse", "--short=12", "HEAD")
    assert published[0] == "# make replay"
    assert re.fullmatch(
        rf"> Written by `make replay` on \d{{4}}-\d\d-\d\d \d\d:\d\d UTC; published from "
        rf"`target/replay/report.md` at commit {commit}\.",
        published[2],
    ), published[2]
    assert "| 1 | 1234 |" in published
    assert "![ladder](replay-ladder.svg)" in published
    assert (checkout / "loadtest/results/replay-ladder.svg").read_text() == "<svg/>"
    index = (checkout / "loadtest/results/README.md").read_text()
    assert "| [replay](replay.md) | `make replay` |" in index and f"commit {commit} |" in index
    assert "| bench | `make bench` | not yet: `make bench`, then `make publish-results` |" in index


def test_publish_results_says_when_the_tree_had_uncommitted_changes(checkout):
    (checkout / "code.txt").write_text("v2\n")
    assert publish(checkout, "replay").returncode == 0
    assert "with uncommitted changes." in (checkout / "loadtest/results/replay.md").read_text()


def test_publish_results_names_the_target_that_writes_a_missing_report(checkout):
    result = publish(checkout, "bench")
    assert result.returncode != 0
    assert "publish-results: no target/bench/report.md: `make bench` writes it" in result.stderr
    assert not (checkout / "loadtest/results").exists()
