#!/usr/bin/env python3
"""make publish-results: copies the last report of each run from target/ into
loadtest/results/<name>.md, where the docs link to it, headed by when the run
wrote it and the commit the tree was at. Images the report shows from its own
directory are copied beside it as <name>-<file> and the links follow.

The runs write their reports themselves (make bench, make replay, make
compare-topologies, make scale, make e2e); this only publishes the last ones,
so no figure under loadtest/results/ is typed by hand. It also writes
loadtest/results/README.md, the index the docs link to: each report with the
make target that writes it and, once published, when and at which commit.

Usage: publish_results.py [--repo DIR] [NAME ...]   (no NAME: every report present)
       publish_results.py --print-index           (the index as the files present make it)
"""

import argparse
import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

# name -> (the directory its run writes report.md into, the make target that runs it)
REPORTS = {
    "bench": ("target/bench", "make bench"),
    "replay": ("target/replay", "make replay"),
    "compare-topologies": ("target/compare", "make compare-topologies"),
    "scale": ("target/scale", "make scale"),
    "e2e": ("target/e2e", "make e2e"),
}
RESULTS = "loadtest/results"
IMAGE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def provenance(repo, report, target):
    written = datetime.datetime.fromtimestamp(report.stat().st_mtime, datetime.UTC)
    commit = git(repo, "rev-parse", "--short=12", "HEAD")
    dirty = git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS}")
    return (
        f"> Written by `{target}` on {written:%Y-%m-%d %H:%M} UTC; published from "
        f"`{report.relative_to(repo)}` at commit {commit}" + (" with uncommitted changes" if dirty else "") + "."
    )


def publish(repo, name):
    directory, target = REPORTS[name]
    report = repo / directory / "report.md"
    if not report.is_file():
        raise SystemExit(f"publish-results: no {directory}/report.md: `{target}` writes it")
    out = repo / RESULTS
    out.mkdir(parents=True, exist_ok=True)

    def image(match):
        source = report.parent / match[2]
        if "/" in match[2] or not source.is_file():
            return match[0]
        shutil.copyfile(source, out / f"{name}-{match[2]}")
        return f"{match[1]}{name}-{match[2]}{match[3]}"

    text = IMAGE.sub(image, report.read_text()).strip("\n")
    # The provenance goes under the report's own title, if it has one.
    title, _, rest = text.partition("\n") if text.startswith("# ") else ("", "", text)
    parts = [title, provenance(repo, report, target), rest.strip("\n")]
    (out / f"{name}.md").write_text("\n\n".join(part for part in parts if part) + "\n")
    return out / f"{name}.md"


def index(repo):
    """loadtest/results/README.md from what is published there."""
    out = repo / RESULTS
    rows, shown = [], set()
    for name, (_, target) in REPORTS.items():
        published = out / f"{name}.md"
        if published.is_file():
            stamp = next((line for line in published.read_text().splitlines() if line.startswith("> Written")), "")
            when = re.search(r"on (.+ UTC).* at commit (\w+)( with uncommitted changes)?", stamp)
            state = f"{when[1]}, commit {when[2]}{when[3] or ''}" if when else "published"
            rows.append(f"| [{name}]({name}.md) | `{target}` | {state} |")
            shown |= {published.name, *(f.name for f in out.glob(f"{name}-*"))}
        else:
            rows.append(f"| {name} | `{target}` | not yet: `{target}`, then `make publish-results` |")
    others = sorted(f.name for f in out.iterdir() if f.is_file() and f.name not in shown | {"README.md"})
    lines = [
        "# Results",
        "",
        "Reports the runs wrote, published here by `make publish-results`, which copies each run's last",
        "`target/<run>/report.md` with the date the run wrote it and the commit the tree was at. This page is",
        "written by the same command; nothing here is typed by hand.",
        "",
        "| report | written by | published |",
        "| --- | --- | --- |",
        *rows,
    ]
    if others:
        listed = ", ".join(f"`{other}`" for other in others)
        lines += ["", f"Also here, from a run whose report is not published: {listed}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--print-index", action="store_true", help="print loadtest/results/README.md as it should be")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(REPORTS))
    args = parser.parse_args(argv)
    if args.print_index:
        print(index(args.repo), end="")
        return 0
    unknown = [n for n in args.names if n not in REPORTS]
    if unknown:
        raise SystemExit(f"publish-results: unknown report {', '.join(unknown)}; known: {', '.join(REPORTS)}")
    names = args.names or [n for n, (d, _) in REPORTS.items() if (args.repo / d / "report.md").is_file()]
    if not names:
        raise SystemExit(
            "publish-results: no report under target/ yet; "
            + ", ".join(f"`{t}` writes {d}/report.md" for d, t in REPORTS.values())
        )
    for name in names:
        print(f"publish-results: wrote {publish(args.repo, name).relative_to(args.repo)}")
    (args.repo / RESULTS / "README.md").write_text(index(args.repo))


if __name__ == "__main__":
    sys.exit(main())
