"""A differential scenario is drawn whole, from the seed alone, before anything runs.

Hypothesis requires that the same choices always draw the same data; drawing a step against a
model learnt from real QEMU's replies broke that (FlakyStrategyDefinition whenever a reply
changed what was drawn).  So `scenarios` draws every step up front against a *predicted* model,
which only the steps drawn before update (`predict`: commands are assumed to succeed, jobs to
behave as their options say).  When the scenario runs, `skip_reason` decides, from the model
learnt from the reference, whether each step is applicable: a step that would make real QEMU
nondeterministic, hit a known crash (conformance.differential.crashes) or a known divergence
the run avoids is skipped, deterministically.  Shrinking works on the drawn list as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from hypothesis import strategies as st

from conformance.differential.crashes import Version, known_crash
from conformance.differential.gen import (
    Draws,
    T,
    backup_step,
    bitmap_step,
    hmp_io_step,
    job_step,
    query_step,
    transaction_step,
)
from conformance.differential.model import ENDED, NODE_OF, Model
from conformance.differential.steps import HmpIo, Img, Qmp, Step

GENERATORS: dict[str, Callable[[Draws, Model], Step]] = {
    "guest_io": hmp_io_step,
    "bitmap_command": bitmap_step,
    "backup": backup_step,
    "transaction": transaction_step,
    "job_command": job_step,
    "query": query_step,
}
RULES = tuple(GENERATORS)


class _Drawer:
    """Gives a composite strategy's draw function the ``data.draw(strategy, label=...)`` shape."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def draw(self, strategy: st.SearchStrategy[T], label: Any = None) -> T:
        value: T = self._draw(strategy)
        return value


@st.composite
def _step_in(draw: Callable[[st.SearchStrategy[Any]], Any], model: Model) -> Step:
    """One step drawn against `model`, which it then updates (`predict`)."""
    rule = draw(st.sampled_from(RULES))
    step = replace(GENERATORS[rule](_Drawer(draw), model), rule=rule)
    predict(model, step)
    return step


PHASES = 3


def _phase_sizes(max_steps: int) -> list[int]:
    """max_steps split into up to PHASES list sizes (the first one at least 1)."""
    count = max(1, min(PHASES, max_steps))
    sizes = [max_steps // count] * count
    sizes[0] += max_steps - sum(sizes)
    return sizes


def scenarios(max_steps: int, avoid: frozenset[str] = frozenset()) -> st.SearchStrategy[list[Step]]:
    """A list of 1..max_steps steps, each drawn against the model the earlier ones predict.

    A hypothesis list (its elements are drawn in order, so the shared model evolves in order)
    rather than a loop in a composite: the shrinker deletes list elements well, and an element's
    draws become the next element's when one is deleted."""

    @st.composite
    def fresh(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[Step]:
        model = Model(avoid=avoid)
        steps: list[Step] = []
        # Hypothesis keeps lists short (about 6 elements); PHASES lists in a row make scenarios
        # long enough for jobs to meet later commands, and shrink to empty lists all the same.
        for phase, size in enumerate(_phase_sizes(max_steps)):
            steps += draw(st.lists(_step_in(model), min_size=0 if phase else 1, max_size=size))
        return steps

    return fresh()


# ---- the predicted model ------------------------------------------------------------------------

def _predict_backup(model: Model, arguments: Mapping[str, Any], txn: int) -> None:
    target = arguments.get("target")
    if isinstance(target, Img):
        model.note_target(target.name)
    device = str(arguments.get("device"))
    if device not in NODE_OF or model.node_has_job(NODE_OF[device]):
        return
    if str(arguments.get("job-id")) in {job.id for job in model.live_jobs()}:
        return
    job = model.add_job(arguments, txn)
    if job.sync == "none" or job.speed > 0:
        model.statuses[job.id] = "running"
        model.held[job.id] = True
    elif not job.auto_finalize:
        model.statuses[job.id] = "pending"
    elif not job.auto_dismiss:
        model.statuses[job.id] = "concluded"
    else:
        model.statuses[job.id] = ENDED
    if device == "drive1":
        model.blkdebug_armed = False


def _predict_job_verb(model: Model, command: str, arguments: Mapping[str, Any]) -> None:
    job = model.jobs.get(str(arguments.get("id", arguments.get("device"))))
    if job is None or model.status(job.id) == ENDED:
        return
    model.apply_job_verb(command, arguments)
    ended = "concluded" if not job.auto_dismiss else ENDED
    if command in ("job-cancel", "block-job-cancel", "job-finalize"):
        model.statuses[job.id] = ended
    elif command == "job-dismiss":
        model.statuses[job.id] = ENDED
    elif command in ("job-pause", "block-job-pause"):
        model.statuses[job.id] = "paused"
    elif command in ("job-resume", "block-job-resume"):
        model.statuses[job.id] = "running"
    elif command == "block-job-set-speed" and arguments.get("speed") == 0 and job.sync != "none":
        model.statuses[job.id] = ended


def predict(model: Model, step: Step) -> None:
    """Update the generation-time model as if every command of `step` succeeded."""
    for primitive in step.primitives:
        if isinstance(primitive, HmpIo):
            if primitive.device == "drive1":
                model.blkdebug_armed = primitive.command == "flush"
            continue
        if not isinstance(primitive, Qmp):
            continue
        arguments = dict(primitive.arguments or {})
        command = primitive.command
        if command.startswith("block-dirty-bitmap-"):
            model.apply_bitmap_action(command, arguments)
        elif command == "drive-backup":
            _predict_backup(model, arguments, model.new_txn())
        elif command == "transaction":
            actions = arguments.get("actions", [])
            if any(action.get("type") == "abort" for action in actions):
                continue
            shared = model.new_txn()
            for action in actions:
                kind, data = str(action.get("type")), action.get("data") or {}
                if kind == "drive-backup":
                    _predict_backup(model, data, shared)
                elif kind.startswith("block-dirty-bitmap-"):
                    model.apply_bitmap_action(kind, data)
        elif command.startswith(("job-", "block-job-")):
            _predict_job_verb(model, command, arguments)


# ---- applicability at run time ----------------------------------------------------------------

def _backups(step: Step) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for primitive in step.primitives:
        if not isinstance(primitive, Qmp):
            continue
        arguments = primitive.arguments or {}
        if primitive.command == "drive-backup":
            found.append(arguments)
        elif primitive.command == "transaction":
            found += [action.get("data") or {} for action in arguments.get("actions", [])
                      if action.get("type") == "drive-backup"]
    return found


def _backup_reason(model: Model, arguments: Mapping[str, Any]) -> str | None:
    node = NODE_OF.get(str(arguments.get("device")))
    if arguments.get("bitmap-mode") == "always" and node == "drive1" and model.blkdebug_armed:
        return "bitmap-mode=always while blkdebug may fail a read of drive1 (timing)"
    if "busy-node" in model.avoid and node is not None and model.node_has_job(node):
        return "avoided: busy-node"
    if ("backing-of-new-target" in model.avoid and arguments.get("sync") in ("none", "top")
            and arguments.get("mode") != "existing"):
        return "avoided: backing-of-new-target"
    return None


def skip_reason(step: Step, model: Model, version: Version | None, *,
                include_known_crashes: bool = False) -> str | None:
    """Why `step` is not applicable to the scenario as the reference left it (None: run it)."""
    if not include_known_crashes:
        crash = known_crash(step, model, version)
        if crash is not None:
            return f"known crash of real QEMU: {crash.name}"
    for arguments in _backups(step):
        reason = _backup_reason(model, arguments)
        if reason:
            return reason
    if step.rule == "transaction" and "busy-node" in model.avoid and len(_backups(step)) > 1:
        return "avoided: busy-node"
    if step.rule == "guest_io":
        device = next(p.device for p in step.primitives if isinstance(p, HmpIo))
        if ("node-io-during-job" in model.avoid and device != "drive0"
                and model.node_has_job(NODE_OF[device])):
            return "avoided: node-io-during-job"
    elif step.rule == "job_command":
        if not model.live_jobs():
            return "no live job"
        command = next(p for p in step.primitives if isinstance(p, Qmp))
        arguments = command.arguments or {}
        if command.command == "block-job-set-speed" and int(arguments.get("speed", 0)) > 0:
            job = model.jobs.get(str(arguments.get("device")))
            if job is None or not model.held.get(job.id) or job.speed <= 0:
                return "a nonzero speed only for a held job (timing)"
    elif step.rule == "query":
        return _query_reason(step, model)
    return None


def _query_reason(step: Step, model: Model) -> str | None:
    if not model.progress_is_timing_free():
        return "a job stopped on an error (its progress depends on timing)"
    command = next(p.command for p in step.primitives if isinstance(p, Qmp))
    live = model.live_jobs()
    if ("query-during-job" in model.avoid and live
            and command in ("query-block", "query-named-block-nodes")):
        return "avoided: query-during-job"
    if ("progress-query" in model.avoid and any(model.held.get(job.id) for job in live)
            and command in ("query-jobs", "query-block-jobs")):
        return "avoided: progress-query"
    return None
