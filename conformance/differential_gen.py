"""Hypothesis strategies for differential steps, drawn against the current Model.

Every generator returns a Step.  What is generated is limited to what real QEMU 7.2 does
deterministically and survives:

* speed-limited (``speed=1``) jobs are the only jobs alive between steps; unlimited jobs are
  waited for by the runner's settle;
* a nonzero set-speed only for held jobs (a job's first task decides whether it is held);
* ``bitmap-mode=always`` is not used on drive1 while blkdebug may fail a read (which clusters
  parallel copy tasks finished before the error depends on timing);
* a grouped transaction with two or more backups holds only backups that cannot fail to
  prepare (QEMU 7.2 hangs when it rolls such a transaction back);
* ``block-dirty-bitmap-enable`` actions only where their prepare cannot fail (QEMU 7.2
  dereferences a NULL bitmap in the abort of a failed enable), so never in grouped mode;
* a merge never has an empty ``bitmaps`` list (QEMU 7.2 crashes).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from conformance.differential_model import NODE_OF, Model
from conformance.differential_steps import IMAGE_BYTES, CreateImage, HmpIo, Img, Qmp, Step

PATTERNS = ("0x00", "0x11", "0x5a", "0xa5", "0xc3", "0xff")
BITMAP_NAMES = ("b0", "b1", "b2")
NODE_NAMES = ("drive0", "node0", "drive1")
VALID_GRANULARITIES = (512, 65536, 131072, 1 << 20, 1 << 31)
INVALID_GRANULARITIES = (0, 256, 1000, 1 << 32, -512)
CLUSTER = 65536


# ---- small pieces -----------------------------------------------------------------------------

def _extent(data: st.DataObject) -> tuple[int, int]:
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


def _bitmap_name(data: st.DataObject) -> str:
    return data.draw(st.sampled_from(BITMAP_NAMES) | st.just(""), label="bitmap name")


def _node_name(data: st.DataObject, *, allow_unknown: bool = True) -> str:
    choices = st.sampled_from(NODE_NAMES)
    return data.draw(choices | st.just("nodev") if allow_unknown else choices, label="node")


def _flag(data: st.DataObject, label: str, default: bool = True) -> bool | None:
    """None (the option left out) most of the time; otherwise an explicit value."""
    return data.draw(st.sampled_from((None, None, None, not default, default)), label=label)


# ---- guest I/O --------------------------------------------------------------------------------

def hmp_io_step(data: st.DataObject) -> Step:
    """A qemu-io command through HMP: a pattern or zero write, a read, or a flush."""
    device = data.draw(st.sampled_from(NODE_NAMES), label="device")
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

def bitmap_arguments(data: st.DataObject, kind: str, model: Model) -> dict[str, Any]:
    """Arguments of one block-dirty-bitmap-* command or action."""
    node = _node_name(data)
    existing = [bitmap.name for bitmap in model.bitmaps.values() if bitmap.node == NODE_OF.get(node)]
    name = data.draw(st.sampled_from(existing) if existing and data.draw(st.booleans())
                     else st.just(_bitmap_name(data)), label="name")
    if kind == "block-dirty-bitmap-merge":
        sources = data.draw(st.lists(
            st.sampled_from(BITMAP_NAMES) | st.builds(
                lambda n, b: {"node": n, "name": b}, st.sampled_from(NODE_NAMES),
                st.sampled_from(BITMAP_NAMES)),
            min_size=1, max_size=3), label="merge sources")
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


def bitmap_step(data: st.DataObject, model: Model) -> Step:
    kind = data.draw(st.sampled_from(BITMAP_KINDS), label="bitmap command")
    arguments = bitmap_arguments(data, kind, model)
    return Step(f"{kind} {arguments.get('name', arguments.get('target'))}",
                (Qmp(kind, arguments),))


# ---- backups ----------------------------------------------------------------------------------

def backup_arguments(data: st.DataObject, model: Model, *, surely_valid: bool = False,
                     device: str | None = None) -> tuple[dict[str, Any], tuple[CreateImage, ...]]:
    """drive-backup arguments (with a fresh target) and the images to create first.  With
    `surely_valid`, only what cannot fail to prepare (the caller picks an idle device)."""
    if device is None:
        device = data.draw(st.sampled_from(("drive0", "drive0", "drive1", "nodev")), label="device")
    node = NODE_OF.get(device, device)
    usable = sorted(bitmap.name for bitmap in model.bitmaps.values()
                    if bitmap.node == node and bitmap.enabled
                    and (node, bitmap.name) not in model.busy_bitmaps())
    if surely_valid:
        syncs = ("full", "incremental", "bitmap") if usable else ("full",)
    else:
        syncs = ("full", "full", "incremental", "incremental", "bitmap", "bitmap", "top", "none")
    sync = data.draw(st.sampled_from(syncs), label="sync")
    live_ids = [job.id for job in model.live_jobs()]
    if not surely_valid and live_ids and data.draw(st.integers(0, 9)) == 0:
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
        wants_bitmap = sync in ("incremental", "bitmap") or data.draw(st.integers(0, 3)) == 0
        if wants_bitmap and data.draw(st.integers(0, 11)) > 0:
            arguments["bitmap"] = data.draw(st.sampled_from(usable) if usable and data.draw(st.booleans())
                                            else st.sampled_from(names), label="bitmap")
        modes = ("on-success", "never") if armed_drive1 else ("on-success", "never", "always")
        if (sync == "bitmap" and "bitmap" in arguments) or data.draw(st.integers(0, 5)) == 0:
            if data.draw(st.integers(0, 7)) > 0:
                arguments["bitmap-mode"] = data.draw(st.sampled_from(modes), label="bitmap mode")
    if sync != "full" and data.draw(st.booleans()):
        arguments["mode"] = "existing"
        creates = (CreateImage(Img(target)),)
    if data.draw(st.integers(0, 2)) == 0:
        arguments["speed"] = 1
    elif node == "drive1" and data.draw(st.integers(0, 3)) == 0:
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


def backup_step(data: st.DataObject, model: Model) -> Step:
    arguments, creates = backup_arguments(data, model)
    return Step(f"drive-backup {_backup_label(arguments)}", (*creates, Qmp("drive-backup", arguments)))


# ---- transactions -----------------------------------------------------------------------------

def _mentions(action: dict[str, Any], node: str, name: str) -> bool:
    data = action.get("data") or {}
    if action["type"] == "drive-backup":
        return NODE_OF.get(str(data.get("device"))) == node and data.get("bitmap") == name
    return NODE_OF.get(str(data.get("node"))) == node and name in (data.get("name"), data.get("target"))


def _enable_is_safe(model: Model, earlier: list[dict[str, Any]], data: dict[str, Any]) -> bool:
    """An enable action whose prepare cannot fail: the bitmap exists, is not busy, and no
    earlier action of the transaction touches it."""
    node = NODE_OF.get(str(data["node"]))
    name = str(data["name"])
    return (node is not None and (node, name) in model.bitmaps
            and (node, name) not in model.busy_bitmaps()
            and not any(_mentions(action, node, name) for action in earlier))


def transaction_step(data: st.DataObject, model: Model) -> Step:
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
                if sum(action["type"] == "drive-backup" for action in actions) and mode == "grouped":
                    continue  # a second backup only as above
                arguments, made = backup_arguments(data, model)
                creates += made
                actions.append({"type": kind, "data": arguments})
            elif kind == "abort":
                actions.append({"type": kind, "data": {}})
            else:
                arguments = bitmap_arguments(data, kind, model)
                if kind == "block-dirty-bitmap-enable" and (
                        mode == "grouped" or not _enable_is_safe(model, actions, arguments)):
                    continue
                actions.append({"type": kind, "data": arguments})
    transaction: dict[str, Any] = {"actions": actions}
    if mode is not None:
        transaction["properties"] = {"completion-mode": mode}
    label = f"transaction ({mode or 'default'}): " + ", ".join(action["type"] for action in actions)
    return Step(label, (*creates, Qmp("transaction", transaction)))


# ---- job commands -----------------------------------------------------------------------------

def job_step(data: st.DataObject, model: Model) -> Step:
    """A job verb on a live job (sometimes on an unknown one), in whatever state it rests."""
    live = [job.id for job in model.live_jobs()]
    job_id = data.draw(st.sampled_from(live) if live else st.just("nosuch"), label="job")
    if data.draw(st.integers(0, 9)) == 0:
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


def query_step(data: st.DataObject) -> Step:
    command, arguments = data.draw(st.sampled_from(QUERIES), label="query")
    return Step(command, (Qmp(command, arguments),))
