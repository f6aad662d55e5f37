"""Drained sections (emulator/block/drain.py) as QEMU 7.2's block/io.c runs them, seen from the
block jobs they pause: which jobs a section reaches, how often they pause, and the drain saldo of
edges that move onto or off drained nodes.  The QMP-level behaviour is pinned by the 7.2 goldens
and measured with scripts/drain_probe.py; these tests pin the model's rules one by one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from helpers import JobEventRecorder as Recorder

from emulator.block.drain import (
    attach_parent,
    detach_parent,
    drain_all_begin,
    drain_all_end,
    drained,
    drained_begin,
    drained_end,
    move_parent,
)
from emulator.block.drivers import NullCoNode
from emulator.block.node import BlockNode
from emulator.jobs import BlockJob, JobManager, JobStatus


class StepBlockJob(BlockJob):
    """A block job on `node` that yields between `steps` units of work (the test enters it)."""

    job_type = "backup"

    def __init__(self, manager: JobManager, job_id: str, node: BlockNode, *, steps: int = 100,
                 **kwargs: Any) -> None:
        super().__init__(manager, job_id, node, **kwargs)
        self.steps = steps

    async def run(self) -> int:
        for _ in range(self.steps):
            await self.yield_()
            if self.is_cancelled():
                return 0
        return 0


def run(scenario: Callable[[JobManager, Recorder], Coroutine[Any, Any, None]]) -> Recorder:
    events = Recorder(statuses_only=True)
    manager = JobManager(events)
    asyncio.run(asyncio.wait_for(scenario(manager, events), 10))
    return events


def chain(*names: str) -> list[BlockNode]:
    """Nodes stacked bottom-up: chain("file", "fmt", "filter") makes filter -> fmt -> file."""
    nodes = [NullCoNode(name) for name in names]
    for below, above in itertools.pairwise(nodes):
        above.attach_child("file", below)
    return nodes


def test_a_drained_node_pauses_the_jobs_above_it_once() -> None:
    """bdrv_drained_begin reaches every ancestor (bdrv_child_cb_drained_begin) and pauses the
    jobs attached there (child_job_drained_begin); not the jobs of unrelated nodes, nor those
    below the drained node (a non-recursive drain quiesces no children)."""
    async def scenario(manager: JobManager, events: Recorder) -> None:
        file, fmt, top = chain("file", "fmt", "top")
        other = NullCoNode("other")
        above = StepBlockJob(manager, "above", top)
        above.add_node(fmt, role="target")  # two edges into the drained subtree: still one pause
        below = StepBlockJob(manager, "below", file)
        unrelated = StepBlockJob(manager, "unrelated", other)
        for job in (above, below, unrelated):
            job.start()
        events.log.clear()
        with drained(fmt):
            assert above.status is JobStatus.PAUSED and above.pause_count == 2
            assert below.status is JobStatus.RUNNING and unrelated.status is JobStatus.RUNNING
            assert (file.quiesce_counter, fmt.quiesce_counter, top.quiesce_counter) == (0, 1, 1)
        assert above.status is JobStatus.RUNNING and above.pause_count == 0
        assert (fmt.quiesce_counter, top.quiesce_counter, fmt.parent_quiesce) == (0, 0, {})
        manager.cancel_all_sync()

    events = run(scenario)
    assert events.of("above")[:2] == ["paused", "running"]
    assert events.of("below")[0] == events.of("unrelated")[0] == "aborting"


def test_each_sequential_section_is_one_pair_and_nested_ones_share_it() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        (node,) = chain("node")
        job = StepBlockJob(manager, "job", node)
        job.start()
        events.log.clear()
        for _ in range(2):
            with drained(node):
                pass
        drained_begin(node)
        drained_begin(node)
        drained_end(node)
        assert job.status is JobStatus.PAUSED  # the outer section still holds it
        drained_end(node)
        manager.cancel_all_sync()

    assert run(scenario).of("job")[:6] == ["paused", "running"] * 3


def test_a_job_attached_inside_a_section_starts_paused() -> None:
    """The drain saldo of bdrv_replace_child_noperm: a job child attached to a drained node is
    paused at once, so a job created and started there shows `created running paused running`
    (QEMU 7.2's drive-backup: the action's drain of the source)."""
    async def scenario(manager: JobManager, events: Recorder) -> None:
        source, cbw = chain("source", "cbw")
        with drained(source):
            job = StepBlockJob(manager, "job0", cbw, steps=1)
            job.start()
            assert job.status is JobStatus.PAUSED
        job.enter()  # its one unit of work
        await manager.wait_until(lambda: job.status is JobStatus.NULL)

    assert run(scenario).of("job0") == ["created", "running", "paused", "running", "waiting",
                                        "pending", "concluded", "null"]


def test_detaching_from_a_drained_node_ends_its_sections_for_the_job() -> None:
    async def scenario(manager: JobManager, events: Recorder) -> None:
        (node,) = chain("node")
        job = StepBlockJob(manager, "job", node)
        job.start()
        drained_begin(node)
        assert job.status is JobStatus.PAUSED
        job.remove_all_nodes()  # block_job_remove_all_bdrv: the edge goes, so does its pause
        assert job.status is JobStatus.RUNNING and node.parent_quiesce == {}
        drained_end(node)  # reaches nobody
        assert job.status is JobStatus.RUNNING
        manager.cancel_all_sync()

    assert run(scenario).of("job")[2:5] == ["paused", "running", "aborting"]


def test_moving_an_edge_between_nodes_settles_the_difference() -> None:
    """bdrv_replace_node moving a parent from a drained node to an undrained one ends the
    sections for that parent (and the reverse begins them), so nothing stays paused."""
    async def scenario(manager: JobManager, events: Recorder) -> None:
        old, new = NullCoNode("old"), NullCoNode("new")
        parent = NullCoNode("parent")
        parent.attach_child("file", old)
        job = StepBlockJob(manager, "job", parent)
        job.start()
        drained_begin(old)
        assert parent.quiesce_counter == 1 and job.status is JobStatus.PAUSED
        parent.children["file"] = new
        move_parent(old, new, parent)
        assert parent.quiesce_counter == 0 and job.status is JobStatus.RUNNING
        drained_end(old)
        drained_begin(new)
        assert job.status is JobStatus.PAUSED
        parent.children["file"] = old
        move_parent(new, old, parent)
        assert job.status is JobStatus.RUNNING
        drained_end(new)
        manager.cancel_all_sync()

    assert run(scenario).of("job")[2:7] == ["paused", "running", "paused", "running", "aborting"]


def test_drain_all_pauses_every_block_job_once() -> None:
    """bdrv_drain_all_begin drains each node on its own (parents that are nodes are skipped), so
    a job attached to several nodes still pauses once; user-paused and pending jobs show
    nothing; a job without nodes is not reached at all."""
    async def scenario(manager: JobManager, events: Recorder) -> None:
        a, b = chain("a", "b")
        running = StepBlockJob(manager, "run", b)
        running.add_node(a, role="target")
        parked = StepBlockJob(manager, "parked", NullCoNode("c"))
        waiting = StepBlockJob(manager, "wait", NullCoNode("d"), steps=1, auto_finalize=False)
        for job in (running, parked, waiting):
            job.start()
        parked.user_pause()
        waiting.enter()
        await manager.wait_until(lambda: waiting.status is JobStatus.PENDING)
        events.log.clear()
        nodes = [a, b, *parked.nodes, *waiting.nodes]
        drain_all_begin(nodes)
        assert running.pause_count == 2 and b.quiesce_counter == 1
        drain_all_end(nodes)
        assert all(node.quiesce_counter == 0 for node in nodes)
        manager.cancel_all_sync()

    events = run(scenario)
    assert events.of("run")[:3] == ["paused", "running", "aborting"]
    assert events.of("parked") == ["running", "aborting", "concluded", "null"]
    assert events.of("wait") == ["aborting", "concluded", "null"]


def test_a_drain_polls_a_finished_job_to_completion() -> None:
    """A job whose work just ended is busy until its job_exit bottom half ran; the drain's poll
    runs it (AIO_WAIT_WHILE), so the job is gone when the section has begun."""
    async def scenario(manager: JobManager, events: Recorder) -> None:
        (node,) = chain("node")
        job = StepBlockJob(manager, "job0", node, steps=1)
        job.start()
        job.enter()
        assert job.busy and job.status is JobStatus.RUNNING
        with drained(node):
            assert job.status is JobStatus.NULL

    assert run(scenario).of("job0")[-1] == "null"


def test_parents_without_drain_callbacks_are_only_counted() -> None:
    """A BlockBackend or a temporary user has no observable drain callback; its edge still
    keeps count, so detaching it mid-section does not unbalance the node."""
    node = NullCoNode("node")
    user = object()
    attach_parent(node, user)
    drained_begin(node)
    assert node.parent_quiesce == {id(user): 1}
    detach_parent(node, user)
    assert node.parent_quiesce == {} and node.quiesce_counter == 1
    drained_end(node)
    assert node.quiesce_counter == 0
