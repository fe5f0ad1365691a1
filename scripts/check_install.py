"""What a new user installs does what the README and the Dockerfile say (used by ``.ci/run``).

    python scripts/check_install.py readme-demo          # run the demo with this interpreter
    python scripts/check_install.py readme-demo --stdout FILE   # or compare a saved stdout
    python scripts/check_install.py image-extras         # the extras the Docker image installs

``readme-demo`` checks that ``preproc demo`` prints exactly the summary the README shows.

The README's block after "prints a summary" is the demo's standard output line for line,
but for the run id (``<run id>``: it depends on where the demo's inputs lie) and the
closing ``done in ...`` line (a time). The demo runs in a new temporary folder with its
default ``--output``, so paths print as in the README. ``.ci/run`` calls this with a fresh
venv that holds the base install only; ``tests/engine/test_readme.py`` imports it, so the README
and the check cannot drift apart. Exit code 0 when they match; 1 with a diff.

``image-extras`` prints the extras of the Dockerfile's ``pip install "preproc[...]"`` line,
its ARGs rendered, comma-separated (``.ci/run`` installs exactly those in a fresh venv and
runs the default spec there). Standard library only: the base install has no pytest.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "<run id>"


def readme_summary(readme: str) -> list[str]:
    """The lines of the first fenced block after the sentence that announces the summary."""
    at = readme.find("prints a summary")
    if at < 0:
        raise ValueError("README: no 'prints a summary' sentence before the demo's summary block")
    m = re.search(r"^```[^\n]*\n(.*?)^```", readme[at:], re.S | re.M)
    if m is None:
        raise ValueError("README: no fenced block after 'prints a summary'")
    return m.group(1).rstrip("\n").split("\n")


def demo_summary(stdout: str) -> list[str]:
    """The demo's stdout as the README shows it: run id masked, the timing line dropped."""
    lines = stdout.rstrip("\n").split("\n")
    if lines and lines[-1].startswith("done in "):
        lines = lines[:-1]
    return [re.sub(r"^run [0-9a-f]{12}:", f"run {RUN_ID}:", l) for l in lines]


def run_demo(python: str = sys.executable, *, workers: int | None = None) -> str:
    """Run ``python -m preproc demo`` in a new temporary folder; return its stdout."""
    with tempfile.TemporaryDirectory(prefix="preproc-readme-") as tmp:
        cmd = [python, "-m", "preproc", "demo"] + (["--workers", str(workers)] if workers else [])
        p = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=dict(os.environ))
        if p.returncode != 0:
            raise RuntimeError(f"preproc demo exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        return p.stdout


def diff(expected: list[str], got: list[str]) -> list[str]:
    return list(difflib.unified_diff(expected, got, "README.md", "preproc demo", lineterm=""))


def dockerfile_extras(text: str) -> tuple[list[str], list[str]]:
    """The extras of the Dockerfile's ``pip wheel ".[...]"`` (build stage) and ``pip install
    "preproc[...]"`` (final stage) lines, with ``ARG NAME=default`` values substituted."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))

    def render(s: str) -> list[str]:
        s = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], s)
        return [e.strip() for e in s.split(",") if e.strip()]

    wheel = re.search(r'pip wheel [^\n]*"\.\[([^\]]*)\]"', text)
    install = re.search(r'pip install [^\n]*"preproc\[([^\]]*)\]"', text)
    if not (wheel and install):
        raise ValueError('Dockerfile: no `pip wheel ".[...]"` or `pip install "preproc[...]"` line')
    return render(wheel.group(1)), render(install.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("readme-demo", help="preproc demo prints the README's summary")
    r.add_argument("--stdout", help="a saved stdout of `preproc demo` instead of running it")
    r.add_argument("--readme", default=str(ROOT / "README.md"))
    i = sub.add_parser("image-extras", help="print the extras the Docker image installs")
    i.add_argument("--dockerfile", default=str(ROOT / "Dockerfile"))
    a = ap.parse_args(argv)
    if a.cmd == "image-extras":
        wheel, install = dockerfile_extras(Path(a.dockerfile).read_text())
        if wheel != install:
            print(f"Dockerfile: the build stage makes wheels for {wheel}, the image installs {install}",
                  file=sys.stderr)
            return 1
        print(",".join(install))
        return 0
    expected = readme_summary(Path(a.readme).read_text(encoding="utf-8"))
    out = Path(a.stdout).read_text(encoding="utf-8") if a.stdout else run_demo()
    d = diff(expected, demo_summary(out))
    if d:
        print("preproc demo does not print the README's summary:", *d, sep="\n", file=sys.stderr)
        return 1
    print(f"preproc demo prints the README's summary ({len(expected)} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
