"""Hypothesis strategies for differential steps, drawn against a *predicted* Model.

Every generator returns a Step.  The model a generator sees is the one conformance.differential.plan
predicts from the steps drawn before (never the reference's replies), so the seed alone decides
the scenario.  Generation favours what real QEMU does deterministically and survives; the runtime
check (conformance.differential.plan.skip_reason, against the model learnt from the reference)
skips a step that would not be, and the known crashes (conformance.differential.crashes) are
generated only now and then, to be skipped unless ``blocktxn fuzz --include-known-crashes``:

* speed-limited (``speed=1``) jobs are the only jobs alive between steps; unlimited jobs are
  waited for by the runner's settle;
* a nonzero set-speed only for held jobs (a job's first task decides whether it is held);
* ``bitmap-mode=always`` is not used on drive1 while blkdebug may fail a read (which clusters
  parallel copy tasks finished before the error depends on timing);
* a grouped transaction with two or more backups holds only backups that cannot fail to
  prepare (QEMU 7.2 hangs when it rolls such a transaction back: grouped-rollback-hang);
* ``block-dirty-bitmap-enable`` actions mostly where their prepare cannot fail, and not in
  grouped mode (enable-prepare-fails: QEMU 7.2 and 10.0 segfault in the abort of a failed
  enable);
* a merge's ``bitmaps`` list is rarely empty (merge-empty-list: 7.2 and 10.0 segfault);
* a transaction rarely has two backups of the same node (same-node-backups: the second fails
  to prepare and QEMU then aborts, ``bdrv_do_drained_end: Assertion `bs->quiesce_counter > 0'
  failed``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

from conformance.differential.crashes import enable_is_safe
from conformance.differential.model import NODE_OF, Model
from conformance.differential.steps import IMAGE_BYTES, CreateImage, HmpIo, Img, Qmp, Step

PATTERNS = ("0x00", "0x11", "0x5a", "0xa5", "0xc3", "0xff")
BITMAP_NAMES = ("b0", "b1", "b2")
NODE_NAMES = ("drive0", "node0", "drive1")
VALID_GRANULARITIES = (512, 65536, 131072, 1 << 20, 1 << 31)
INVALID_GRANULARITIES = (0, 256, 1000, 1 << 32, -512)
CLUSTER = 65536

#: Known divergences the generator can be told not to produce (``blocktxn fuzz --avoid NAME``),
#: so that a long run finds new ones instead of the same one again.
AVOIDABLE = {
    "busy-node": "a drive-backup of a node that a live backup job already uses",
    "query-during-job": "query-block / query-named-block-nodes while a backup job is alive",
    "node-io-during-job": "HMP qemu-io addressed to a node name (node0, drive1) while a backup "
                          "job uses that node",
    "progress-query": "query-jobs / query-block-jobs while a speed-limited job is held (its first "
                      "copy task's size follows qcow2 block-status extents)",
    "backing-of-new-target": "sync=none/top with mode=absolute-paths (QEMU names the source as the "
                             "new target's backing file)",
}


T = TypeVar("T")


class Draws(Protocol):
    """What the generators draw from: hypothesis's ``st.data()`` object, or the draw function
    of a composite strategy wrapped by conformance.differential.plan."""

    def draw(self, strategy: st.SearchStrategy[T], label: Any = None) -> T: ...


# ---- small pieces -----------------------------------------------------------------------------

def _extent(data: Draws) -> tuple[int, int]:
    """An (offset, length) inside the image: cluster-, sector- or byte-aligned."""
    kind = data.draw(st.sampled_from(("cluster", "sector", "byte")), label="alignment")
    if kind == "cluster":
        offset = data.draw(st.integers(0, IMAGE_BYTES // CLUSTER - 1)) * CLUSTER
        length = data.draw(st.integers(1, 4)) * CLUSTER
    elif kind == "sector":
        offset = data.draw(st.integers(0, IMAGE_BYTES // 512 - 1)) * 512
        length = data.draw(st.integers(1, 300)) * 512
    else:
        offset = data.draw(st.integers(0, IMAGE_BYTES - 1))
        length = data.draw(st.integers(1, 200_000))
    return offset, max(1, min(length, IMAGE_BYTES - offset))


def _bitmap_name(data: Draws) -> str:
    return data.draw(st.sampled_from(BITMAP_NAMES) | st.just(""), label="bitmap name")


def _node_name(data: Draws, *, allow_unknown: bool = True) -> str:
    choices = st.sampled_from(NODE_NAMES)
    return data.draw(choices | st.just("nodev") if allow_unknown else choices, label="node")


def _rarely(data: Draws, one_in: int) -> bool:
    """True once in `one_in` draws; shrinks to False (hypothesis shrinks integers towards 0),
    so a minimal scenario keeps only the unusual choices that matter."""
    return data.draw(st.integers(0, one_in - 1), label=f"1 in {one_in}") == one_in - 1


def _flag(data: Draws, label: str, default: bool = True) -> bool | None:
    """None (the option left out) most of the time; otherwise an explicit value."""
    return data.draw(st.sampled_from((None, None, None, not default, default)), label=label)


# ---- guest I/O --------------------------------------------------------------------------------

def hmp_io_step(data: Draws, model: Model) -> Step:
    """A qemu-io command through HMP: a pattern or zero write, a read, or a flush."""
    devices = [name for name in NODE_NAMES
               if not ("node-io-during-job" in model.avoid and name != "drive0"
                       and model.node_has_job(NODE_OF[name]))]
    device = data.draw(st.sampled_from(devices), label="device")
    op = data.draw(st.sampled_from(("write", "write", "write", "zero", "read", "verify", "flush",
                                    "past-end")), label="op")
    offset, length = _extent(data)
    pattern = data.draw(st.sampled_from(PATTERNS), label="pattern")
    if op == "write":
        command = f"write -P {pattern} {offset} {length}"
    elif op == "zero":
        command = f"write -z {offset} {length}"
    elif op == "read":
        command = f"read {offset} {length}"
    elif op == "verify":
        command = f"read -P {pattern} {offset} {length}"
    elif op == "past-end":
        command = f"write -P {pattern} {IMAGE_BYTES - 512} 4096"
    else:
        command = "flush"
    return Step(f"qemu-io {device}: {command}", (HmpIo(device, command),))


# ---- bitmaps ----------------------------------------------------------------------------------

def bitmap_arguments(data: Draws, kind: str, model: Model) -> dict[str, Any]:
    """Arguments of one block-dirty-bitmap-* command or action."""
    node = _node_name(data)
    existing = [bitmap.name for bitmap in model.bitmaps.values() if bitmap.node == NODE_OF.get(node)]
    use_existing = bool(existing) and data.draw(st.booleans(), label="existing bitmap")
    name = data.draw(st.sampled_from(existing), label="name") if use_existing else _bitmap_name(data)
    if kind == "block-dirty-bitmap-merge":
        sources = data.draw(st.lists(
            st.sampled_from(BITMAP_NAMES) | st.builds(
                lambda n, b: {"node": n, "name": b}, st.sampled_from(NODE_NAMES),
                st.sampled_from(BITMAP_NAMES)),
            min_size=1, max_size=3), label="merge sources")
        if _rarely(data, 12):
            sources = []  # a known crash (merge-empty-list): skipped unless included
        return {"node": node, "target": name, "bitmaps": sources}
    arguments: dict[str, Any] = {"node": node, "name": name}
    if kind == "block-dirty-bitmap-add":
        granularity = data.draw(st.sampled_from((None, None) + VALID_GRANULARITIES)
                                | st.sampled_from(INVALID_GRANULARITIES), label="granularity")
        if granularity is not None:
            arguments["granularity"] = granularity
        disabled = _flag(data, "disabled", default=False)
        if disabled is not None:
            arguments["disabled"] = disabled
    return arguments


BITMAP_KINDS = ("block-dirty-bitmap-add", "block-dirty-bitmap-add", "block-dirty-bitmap-remove",
                "block-dirty-bitmap-clear", "block-dirty-bitmap-enable",
                "block-dirty-bitmap-disable", "block-dirty-bitmap-merge")


def bitmap_step(data: Draws, model: Model) -> Step:
    kind = data.draw(st.sampled_from(BITMAP_KINDS), label="bitmap command")
    arguments = bitmap_arguments(data, kind, model)
    return Step(f"{kind} {arguments.get('name', arguments.get('target'))}",
                (Qmp(kind, arguments),))


# ---- backups ----------------------------------------------------------------------------------

def backup_arguments(data: Draws, model: Model, *, surely_valid: bool = False,
                     device: str | None = None) -> tuple[dict[str, Any], tuple[CreateImage, ...]]:
    """drive-backup arguments (with a fresh target) and the images to create first.  With
    `surely_valid`, only what cannot fail to prepare (the caller picks an idle device)."""
    if device is None:
        devices: tuple[str, ...] = ("drive0", "drive0", "drive1", "nodev")
        if "busy-node" in model.avoid:
            devices = tuple(name for name in devices
                            if name == "nodev" or not model.node_has_job(NODE_OF[name]))
        device = data.draw(st.sampled_from(devices), label="device")
    node = NODE_OF.get(device, device)
    usable = sorted(bitmap.name for bitmap in model.bitmaps.values()
                    if bitmap.node == node and bitmap.enabled
                    and (node, bitmap.name) not in model.busy_bitmaps())
    syncs: tuple[str, ...]
    if surely_valid:
        syncs = ("full", "incremental", "bitmap") if usable else ("full",)
    else:
        syncs = ("full", "full", "incremental", "incremental", "bitmap", "bitmap", "top", "none")
    sync = data.draw(st.sampled_from(syncs), label="sync")
    live_ids = [job.id for job in model.live_jobs()]
    if not surely_valid and live_ids and _rarely(data, 10):
        job_id = data.draw(st.sampled_from(live_ids), label="job id in use")
    else:
        job_id = model.new_job_id()
    target = model.new_target()
    arguments: dict[str, Any] = {"job-id": job_id, "device": device, "sync": sync,
                                 "format": "qcow2", "target": Img(target)}
    creates: tuple[CreateImage, ...] = ()
    armed_drive1 = model.blkdebug_armed and node == "drive1"
    if surely_valid:
        if sync != "full":
            arguments["bitmap"] = data.draw(st.sampled_from(usable), label="bitmap")
        if sync == "bitmap":
            modes = ("on-success", "never") if armed_drive1 else ("on-success", "never", "always")
            arguments["bitmap-mode"] = data.draw(st.sampled_from(modes), label="bitmap mode")
    else:
        names = sorted(set(usable) | set(BITMAP_NAMES))
        wants_bitmap = sync in ("incremental", "bitmap") or _rarely(data, 4)
        if wants_bitmap and not _rarely(data, 12):
            pick_usable = bool(usable) and data.draw(st.booleans(), label="usable bitmap")
            arguments["bitmap"] = data.draw(st.sampled_from(usable if pick_usable else names),
                                            label="bitmap")
        modes = ("on-success", "never") if armed_drive1 else ("on-success", "never", "always")
        wants_mode = (sync == "bitmap" and "bitmap" in arguments) or _rarely(data, 6)
        if wants_mode and not _rarely(data, 8):
            arguments["bitmap-mode"] = data.draw(st.sampled_from(modes), label="bitmap mode")
    keep_default_mode = not ("backing-of-new-target" in model.avoid and sync in ("none", "top"))
    if sync != "full" and (data.draw(st.booleans()) or not keep_default_mode):
        arguments["mode"] = "existing"
        creates = (CreateImage(Img(target)),)
    if _rarely(data, 3):
        arguments["speed"] = 1
    elif node == "drive1" and _rarely(data, 4):
        arguments["on-source-error"] = "stop"
    for option in ("auto-finalize", "auto-dismiss"):
        value = _flag(data, option)
        if value is not None:
            arguments[option] = value
    return arguments, creates


def _backup_label(arguments: dict[str, Any]) -> str:
    extra = [f"{key}={arguments[key]}" for key in ("bitmap", "bitmap-mode", "mode", "speed",
                                                    "on-source-error", "auto-finalize",
                                                    "auto-dismiss") if key in arguments]
    return f"{arguments['job-id']}: {arguments['sync']} backup of {arguments['device']} " + " ".join(extra)


def backup_step(data: Draws, model: Model) -> Step:
    arguments, creates = backup_arguments(data, model)
    return Step(f"drive-backup {_backup_label(arguments)}", (*creates, Qmp("drive-backup", arguments)))


# ---- transactions -----------------------------------------------------------------------------

def transaction_step(data: Draws, model: Model) -> Step:
    mode = data.draw(st.sampled_from((None, "individual", "grouped")), label="completion mode")
    idle = [device for device in ("drive0", "drive1") if not model.node_has_job(NODE_OF[device])]
    creates: list[CreateImage] = []
    actions: list[dict[str, Any]] = []
    if mode == "grouped" and len(idle) == 2 and data.draw(st.booleans()):
        # Two backups in one grouped transaction: nothing may fail to prepare (QEMU hangs).
        for device in idle:
            arguments, made = backup_arguments(data, model, surely_valid=True, device=device)
            creates += made
            actions.append({"type": "drive-backup", "data": arguments})
    else:
        count = data.draw(st.integers(1, 4), label="actions")
        kinds = BITMAP_KINDS + ("drive-backup", "drive-backup", "drive-backup", "abort")
        for _ in range(count):
            kind = data.draw(st.sampled_from(kinds), label="action")
            if kind == "drive-backup":
                if (sum(action["type"] == "drive-backup" for action in actions) and mode == "grouped"
                        and not _rarely(data, 6)):
                    continue  # a second backup only as above (else: grouped-rollback-hang)
                if "busy-node" in model.avoid and any(action["type"] == "drive-backup"
                                                      for action in actions):
                    continue
                arguments, made = backup_arguments(data, model)
                if any(action["type"] == "drive-backup"
                       and NODE_OF.get(str(action["data"]["device"])) == NODE_OF.get(str(arguments["device"]))
                       for action in actions) and not _rarely(data, 6):
                    continue  # QEMU aborts (bdrv_do_drained_end assertion): same-node-backups
                creates += made
                actions.append({"type": kind, "data": arguments})
            elif kind == "abort":
                actions.append({"type": kind, "data": {}})
            else:
                arguments = bitmap_arguments(data, kind, model)
                if kind == "block-dirty-bitmap-enable" and (
                        mode == "grouped" or not enable_is_safe(model, actions, arguments)) \
                        and not _rarely(data, 6):
                    continue  # enable-prepare-fails
                actions.append({"type": kind, "data": arguments})
    transaction: dict[str, Any] = {"actions": actions}
    if mode is not None:
        transaction["properties"] = {"completion-mode": mode}
    label = f"transaction ({mode or 'default'}): " + ", ".join(action["type"] for action in actions)
    return Step(label, (*creates, Qmp("transaction", transaction)))


# ---- job commands -----------------------------------------------------------------------------

def job_step(data: Draws, model: Model) -> Step:
    """A job verb on a live job (sometimes on an unknown one), in whatever state it rests."""
    live = [job.id for job in model.live_jobs()]
    job_id = data.draw(st.sampled_from(live) if live else st.just("nosuch"), label="job")
    if _rarely(data, 10):
        job_id = "nosuch"
    job = model.jobs.get(job_id)
    verbs = ["job-cancel", "block-job-cancel", "job-pause", "block-job-pause", "job-resume",
             "block-job-resume", "job-finalize", "job-dismiss", "block-job-complete",
             "set-speed-0"]
    if job is not None and model.held.get(job_id) and job.speed > 0:
        verbs.append("set-speed-2")
    verbs.append("set-speed-invalid")
    verb = data.draw(st.sampled_from(verbs), label="verb")
    if verb.startswith("set-speed"):
        speed = {"set-speed-0": 0, "set-speed-2": 2, "set-speed-invalid": -1}[verb]
        primitive = Qmp("block-job-set-speed", {"device": job_id, "speed": speed})
    elif verb.startswith("block-job-"):
        arguments: dict[str, Any] = {"device": job_id}
        if verb == "block-job-cancel" and data.draw(st.booleans()):
            arguments["force"] = True
        primitive = Qmp(verb, arguments)
    else:
        primitive = Qmp(verb, {"id": job_id})
    return Step(f"{primitive.command} {job_id}", (primitive,))


# ---- queries ----------------------------------------------------------------------------------

QUERIES = (("query-block", None), ("query-named-block-nodes", {"flat": True}), ("query-jobs", None),
           ("query-block-jobs", None))


def query_step(data: Draws, model: Model) -> Step:
    queries: tuple[tuple[str, dict[str, Any] | None], ...] = QUERIES
    if "query-during-job" in model.avoid and model.live_jobs():
        queries = tuple(query for query in QUERIES if query[0] in ("query-jobs", "query-block-jobs"))
    if "progress-query" in model.avoid and any(model.held.get(job.id) for job in model.live_jobs()):
        queries = tuple(query for query in queries if query[0] not in ("query-jobs", "query-block-jobs"))
    if not queries:
        queries = (("query-block", None),)
    command, arguments = data.draw(st.sampled_from(queries), label="query")
    return Step(command, (Qmp(command, arguments),))
