"""The differential fuzzer's scenario drawing, run-time applicability and known real-QEMU crashes
(conformance.differential.plan, conformance.differential.crashes, conformance.differential.targets).

No QEMU is needed here except in the tests that check the documented crashes against real QEMU
(skipped, with the reason, for a version that is not installed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, seed, settings

from conformance.differential.crashes import KNOWN_CRASHES, known_crash
from conformance.differential.model import BitmapState, Model
from conformance.differential.plan import RULES, scenarios, skip_reason
from conformance.differential.steps import CreateImage, HmpIo, Img, Qmp, Step
from conformance.differential.targets import FuzzProfile, parse_version
from conformance.targets import EmulatorTarget, MonitorSocket, QemuBinaries

QEMU_10 = Path("/root/.cache/blocktxn/qemu-10.0.2/usr/bin/qemu-system-x86_64")
QEMU_10_IMG = QEMU_10.parent / "qemu-img"
QEMU_72 = Path("/usr/bin/qemu-system-x86_64")


def _draw_plans(run_seed: int, examples: int = 8) -> list[list[Step]]:
    plans: list[list[Step]] = []

    @seed(run_seed)
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(scenarios(25))
    def collect(plan: list[Step]) -> None:
        plans.append(plan)

    collect()
    return plans


def test_the_seed_alone_decides_the_scenarios() -> None:
    first, second = _draw_plans(7), _draw_plans(7)
    assert first == second and len(first) == 8
    assert _draw_plans(8) != first
    rules = {step.rule for plan in first for step in plan}
    assert rules <= set(RULES) and len(rules) >= 4


def test_a_failing_scenario_shrinks_to_its_minimal_form() -> None:
    """Hypothesis shrinks the drawn list: a plan that cancels a job it started shrinks to a few
    steps ending with the backup and the cancel (hypothesis leaves some trivial steps in; the
    greedy step-dropping pass of `blocktxn fuzz`, differential.minimize, removes those)."""

    def cancel_after_backup(plan: list[Step]) -> bool:
        started = set()
        for step in plan:
            for primitive in step.primitives:
                arguments = primitive.arguments or {} if isinstance(primitive, Qmp) else {}
                if isinstance(primitive, Qmp) and primitive.command == "drive-backup":
                    started.add(arguments["job-id"])
                if isinstance(primitive, Qmp) and primitive.command == "job-cancel" \
                        and arguments["id"] in started:
                    return True
        return False

    drawn = [plan for plan in _draw_plans(7, examples=40) if cancel_after_backup(plan)]
    minimal = find(scenarios(25), cancel_after_backup,
                   settings=settings(database=None, derandomize=True, max_examples=3000,
                                     suppress_health_check=list(HealthCheck)))
    assert len(minimal) <= 6, [step.label for step in minimal]
    assert minimal[-2].rule == "backup" and minimal[-1].label.startswith("job-cancel j")
    assert all(step.rule == "guest_io" for step in minimal[:-2])
    assert not drawn or min(len(plan) for plan in drawn) >= len(minimal)
    assert sum(len(plan) for plan in _draw_plans(7, examples=20)) / 20 > 3


# ---- known crashes and applicability ----------------------------------------------------------

def _model() -> Model:
    model = Model()
    model.bitmaps[("node0", "b0")] = BitmapState("node0", "b0")
    return model


def _transaction(actions: list[dict[str, Any]], mode: str | None = None, *creates: str) -> Step:
    arguments: dict[str, Any] = {"actions": actions}
    if mode:
        arguments["properties"] = {"completion-mode": mode}
    return Step("t", (*(CreateImage(Img(name)) for name in creates), Qmp("transaction", arguments)),
                rule="transaction")


def _backup(job: str, device: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"type": "drive-backup", "data": {"job-id": job, "device": device, "sync": "full",
                                             "format": "qcow2", "target": Img(target), **extra}}


ENABLE_MISSING = _transaction([{"type": "block-dirty-bitmap-enable", "data": {"node": "node0", "name": "b9"}}])
ENABLE_GROUPED = _transaction([{"type": "block-dirty-bitmap-enable", "data": {"node": "node0", "name": "b0"}}],
                              "grouped")
MERGE_EMPTY = Step("m", (Qmp("block-dirty-bitmap-merge", {"node": "node0", "target": "b0", "bitmaps": []}),),
                   rule="bitmap_command")
GROUPED_ABORT = _transaction([_backup("j1", "drive0", "t1.qcow2"), _backup("j2", "drive1", "t2.qcow2"),
                              {"type": "abort", "data": {}}], "grouped")
SAME_NODE = _transaction([_backup("j1", "node0", "t1.qcow2"), _backup("j2", "drive0", "t2.qcow2")])
SAME_NODE_NO_BACKEND = _transaction([_backup("j1", "drive0", "t1.qcow2"), _backup("j2", "node0", "t2.qcow2")])
SAME_NODE_DRIVE1 = _transaction([_backup("j1", "drive1", "t1.qcow2"), _backup("j2", "drive1", "t2.qcow2")])
GROUPED_FINE = _transaction([_backup("j1", "drive0", "t1.qcow2"), _backup("j2", "drive1", "t2.qcow2")],
                            "grouped")
ENABLE_FINE = _transaction([{"type": "block-dirty-bitmap-enable", "data": {"node": "node0", "name": "b0"}}])


@pytest.mark.parametrize(("step", "version", "expected"), [
    (ENABLE_MISSING, (7, 2), "enable-prepare-fails"), (ENABLE_MISSING, (10, 0), "enable-prepare-fails"),
    (ENABLE_GROUPED, (7, 2), "enable-prepare-fails"), (ENABLE_GROUPED, (10, 0), None),
    (MERGE_EMPTY, (7, 2), "merge-empty-list"), (MERGE_EMPTY, (10, 0), "merge-empty-list"),
    (GROUPED_ABORT, (7, 2), "grouped-rollback-hang"), (GROUPED_ABORT, (10, 0), None),
    (SAME_NODE, (7, 2), "same-node-backups"), (SAME_NODE, (10, 0), "same-node-backups"),
    (SAME_NODE_NO_BACKEND, (7, 2), None), (SAME_NODE_DRIVE1, (10, 0), None),
    (GROUPED_FINE, (7, 2), None), (ENABLE_FINE, (7, 2), None), (ENABLE_FINE, (10, 0), None),
])
def test_known_crashes_are_recognized_per_version(step: Step, version: tuple[int, int],
                                                  expected: str | None) -> None:
    crash = known_crash(step, _model(), version)
    assert (crash.name if crash else None) == expected
    reason = skip_reason(step, _model(), version)
    if expected:
        assert reason == f"known crash of real QEMU: {expected}"
        assert skip_reason(step, _model(), version, include_known_crashes=True) is None
    else:
        assert reason is None


def test_generation_sometimes_draws_known_crashes() -> None:
    """The same scenarios serve --include-known-crashes: some drawn steps provoke a known crash."""
    plans = _draw_plans(11, examples=60)
    crashing = {crash.name for plan in plans for step in plan
                for crash in [known_crash(step, Model(), (7, 2))] if crash}
    assert crashing, "no known crash drawn in 60 scenarios"


def test_run_time_skips_steps_that_need_a_live_or_held_job() -> None:
    model = Model()
    cancel = Step("c", (Qmp("job-cancel", {"id": "j1"}),), rule="job_command")
    assert skip_reason(cancel, model, (7, 2)) == "no live job"
    model.add_job({"job-id": "j1", "device": "drive0", "sync": "full", "target": Img("t1.qcow2"),
                   "speed": 1}, 1)
    model.statuses["j1"] = "running"
    assert skip_reason(cancel, model, (7, 2)) is None
    speed = Step("s", (Qmp("block-job-set-speed", {"device": "j1", "speed": 2}),), rule="job_command")
    assert skip_reason(speed, model, (7, 2)) == "a nonzero speed only for a held job (timing)"
    model.held["j1"] = True
    assert skip_reason(speed, model, (7, 2)) is None
    io_step = Step("io", (HmpIo("drive1", "read 0 512"),), rule="guest_io")
    assert skip_reason(io_step, model, (7, 2)) is None


# ---- the crashes are real (checked against real QEMU) ---------------------------------------------

def _qemu_for(version: tuple[int, int]) -> tuple[list[str], dict[str, str], str]:
    if version == (7, 2):
        if not QEMU_72.exists():
            pytest.skip("QEMU 7.2 not installed")
        return [str(QEMU_72)], dict(os.environ), "qemu-img"
    if not QEMU_10.exists():
        pytest.skip(f"QEMU 10.0 not unpacked at {QEMU_10} (scripts/setup-qemu-10.sh)")
    env = QemuBinaries.find(str(QEMU_10)).env()
    assert env is not None and env["QEMU_MODULE_DIR"]
    return [str(QEMU_10)], env, str(QEMU_10_IMG)


def _json(value: Any, directory: Path) -> Any:
    if isinstance(value, Img):
        return str(directory / value.name)
    if isinstance(value, dict):
        return {key: _json(item, directory) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(item, directory) for item in value]
    return value


def _run_on_qemu(step: Step, version: tuple[int, int], directory: Path) -> str:
    """'ok', 'crash' or 'hang' after the bitmap b0 on node0 and the step, over QMP stdio."""
    argv, env, img = _qemu_for(version)
    for name in ("d0", "d1"):
        subprocess.run([img, "create", "-q", "-f", "qcow2", str(directory / f"{name}.qcow2"), "4M"],
                       check=True, env=env, timeout=30)
    for primitive in step.primitives:
        if isinstance(primitive, CreateImage):
            subprocess.run([img, "create", "-q", "-f", "qcow2", str(directory / primitive.image.name), "4M"],
                           check=True, env=env, timeout=30)
    commands: list[dict[str, Any]] = [
        {"execute": "qmp_capabilities"},
        {"execute": "blockdev-add", "arguments": {"node-name": "drive1", "driver": "qcow2", "file": {
            "driver": "file", "filename": str(directory / "d1.qcow2")}}},
        {"execute": "block-dirty-bitmap-add", "arguments": {"node": "node0", "name": "b0"}}]
    commands += [{"execute": p.command, "arguments": _json(dict(p.arguments or {}), directory)}
                 for p in step.primitives if isinstance(p, Qmp)]
    commands += [{"execute": "query-status"}, {"execute": "quit"}]
    process = subprocess.Popen(
        [*argv, "-M", "none", "-nodefaults", "-display", "none", "-qmp", "stdio", "-drive",
         f"if=none,id=drive0,file={directory / 'd0.qcow2'},format=qcow2,node-name=node0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        process.communicate("".join(json.dumps(c) + "\n" for c in commands), timeout=8)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return "hang"
    return "ok" if process.returncode == 0 else "crash"


@pytest.mark.parametrize("version", [(7, 2), (10, 0)], ids=["7.2", "10.0"])
@pytest.mark.parametrize(("step", "crash_name"), [
    (ENABLE_MISSING, "enable-prepare-fails"), (ENABLE_GROUPED, "enable-prepare-fails"),
    (MERGE_EMPTY, "merge-empty-list"), (GROUPED_ABORT, "grouped-rollback-hang"),
    (SAME_NODE, "same-node-backups"), (SAME_NODE_NO_BACKEND, "same-node-backups"),
    (SAME_NODE_DRIVE1, "same-node-backups"), (GROUPED_FINE, "grouped-rollback-hang"),
    (ENABLE_FINE, "enable-prepare-fails")],
    ids=["enable-missing", "enable-grouped", "merge-empty", "grouped-abort", "same-node",
         "same-node-node-name", "same-node-drive1", "grouped-fine", "enable-fine"])
def test_documented_crashes_happen_on_real_qemu(step: Step, crash_name: str, version: tuple[int, int],
                                                tmp_path: Path) -> None:
    """Each known crash entry matches what that real QEMU version does with the step."""
    crash = next(c for c in KNOWN_CRASHES if c.name == crash_name)
    predicted = known_crash(step, _model(), version) is not None
    outcome = _run_on_qemu(step, version, tmp_path)
    assert (outcome != "ok") == predicted, (crash.name, version, outcome)
    if crash.name == "grouped-rollback-hang" and predicted:
        assert outcome == "hang"


# ---- which QEMU, and the emulator profile ---------------------------------------------------------

def test_version_and_module_dir_of_an_unpacked_qemu() -> None:
    assert parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)") == (10, 0)
    assert parse_version("QEMU emulator version 7.2.22 (Debian)") == (7, 2)
    assert parse_version("nonsense") is None
    if not QEMU_10.exists():
        pytest.skip(f"QEMU 10.0 not unpacked at {QEMU_10}")
    profile = FuzzProfile.find(str(QEMU_10))
    assert profile.binaries.module_dir == "/root/.cache/blocktxn/qemu-10.0.2/usr/lib/x86_64-linux-gnu/qemu"
    assert profile.version == (10, 0) and profile.binaries.complete
    assert profile.binaries.img == str(QEMU_10_IMG) and profile.binaries.io == str(QEMU_10.parent / "qemu-io")
    assert profile.emulator_version == "10.0"


def test_the_emulator_is_told_the_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The candidate is the emulator in the reference's profile, chosen on its command line (the
    process environment is left alone)."""
    seen: list[list[str]] = []

    def fake_embedded(self: Any, argv: list[str], monitor: MonitorSocket, workdir: Path) -> None:
        monitor.close()
        seen.append(list(argv))

    monkeypatch.setattr("conformance.targets.EmbeddedInstance.__init__", fake_embedded)
    monkeypatch.delenv("BLOCKTXN_QEMU_VERSION", raising=False)
    for version in ("7.2", "10.0"):
        profile = FuzzProfile(QemuBinaries(None, None, None, f"QEMU emulator version {version}.1"),
                              parse_version(f"version {version}.1"))
        candidate = profile.candidate()
        assert isinstance(candidate, EmulatorTarget) and candidate.name == f"emulator@{version}"
        candidate.start(MonitorSocket.pair(), tmp_path, ["-drive", "x"])
        assert seen[-1][:2] == ["-blocktxn-version", version] and seen[-1][-2:] == ["-drive", "x"]
    assert "BLOCKTXN_QEMU_VERSION" not in os.environ
