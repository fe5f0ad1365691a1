"""The refresh CronJob validates like every other object and runs what it should."""

import preproc
from tests.conftest import ROOT
from tests.k8s.checks import assert_valid, kustomize


def test_refresh_overlay_cronjob():
    objs = kustomize(ROOT / "manifests" / "overlays" / "refresh")
    assert_valid(objs)    # strict schemas for 1.30 and 1.34, restricted PSS
    (cj,) = [o for o in objs if o["kind"] == "CronJob"]
    s = cj["spec"]
    assert s["concurrencyPolicy"] == "Forbid" and s["timeZone"] and s["startingDeadlineSeconds"] > 0
    assert s["successfulJobsHistoryLimit"] >= 1 and s["failedJobsHistoryLimit"] >= 1
    pod = s["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "preproc-coordinator"
    assert pod["containers"][0]["command"][:2] == ["preproc", "refresh"]
    assert not [o for o in objs if o["kind"] == "Job"]
    preproc.load_spec(str(ROOT / "manifests" / "overlays" / "refresh" / "spec.yaml"))
