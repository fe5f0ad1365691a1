"""The README tells the truth: the demo prints its summary block, its set-up is two commands,
every extra it lists exists (and every extra is listed), and the Docker image installs
what the default spec and the documented Kubernetes, KubeRay and S3 uses need."""

from __future__ import annotations

import configparser
import importlib.util
import re
import sys

from preproc.clean.steps import build_steps
from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("check_install", ROOT / "scripts" / "check_install.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)  # type: ignore[union-attr]

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _names(block: str) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", l.strip())[0].lower() for l in block.splitlines()
            if l.strip() and not l.strip().startswith("#")}


def test_readme_summary_block_is_the_demo_summary_shape():
    lines = check.readme_summary(README)
    assert lines[0].startswith("demo corpus: ") and lines[1].startswith("run <run id>: ")
    assert any(l.startswith("  kept        ") for l in lines)
    assert lines[-1] == "  report: preproc-demo/output/report.html"
    # the masking and the timing line are the only liberties the comparison takes
    got = check.demo_summary("demo corpus: x\nrun 0123456789ab: 5 documents read\ndone in 1.0s\n")
    assert got == ["demo corpus: x", "run <run id>: 5 documents read"]


def test_demo_prints_exactly_the_readme_summary():
    """`preproc demo`, as a user runs it (a new folder, default output): the README's block,
    line for line. CI also runs this check in a fresh venv with the base install only."""
    stdout = check.run_demo(sys.executable)
    assert check.diff(check.readme_summary(README), check.demo_summary(stdout)) == []


def test_readme_setup_is_two_commands():
    block = README[README.index("## Two commands"):README.index("## Command line")]
    commands = [l for l in block.splitlines() if l.startswith("pip install")]
    assert commands == ["pip install -e . && preproc demo", "pip install -e '.[test]' && python -m pytest -q -n 3"]


def test_readme_lists_every_extra_and_only_those():
    extras = set(_setup_cfg()["options.extras_require"])
    section = README[README.index("### Extras"):]
    section = section[:section.index("\n## ")]
    listed = set(re.findall(r"^\| `([a-z0-9]+)` \|", section, re.M))
    assert listed == extras


def test_docker_image_installs_what_the_default_spec_and_k8s_s3_kuberay_need():
    wheel, install = map(set, check.dockerfile_extras((ROOT / "Dockerfile").read_text()))
    assert wheel == install
    cfg = _setup_cfg()
    extras = cfg["options.extras_require"]
    assert {"k8s", "s3", "ray"} <= install <= set(extras)     # ray: the KubeRay overlay runs this image
    have = _names(cfg["options"]["install_requires"]).union(*(_names(extras[e]) for e in install))
    for step in build_steps(True):                            # the default spec's clean steps
        for req in step.requirements():
            assert req.package in have, (step.name, req)
    assert {"kubernetes", "s3fs", "ray"} <= have
