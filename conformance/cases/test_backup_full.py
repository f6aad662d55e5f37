"""A full drive-backup of a small raw image into an existing raw target."""

from __future__ import annotations

from conformance.recipes import recipe
from conformance.vm import VM


async def test_full_backup(vm: VM) -> None:
    """Patterns written through HMP qemu-io are copied by ``drive-backup sync=full
    mode=existing format=raw``: the job (id defaulting to the drive id) runs through its states
    to BLOCK_JOB_COMPLETED with offset == len == the image size and is gone afterwards; after
    ``quit`` the target equals the source (qemu-img compare) and holds the patterns (qemu-io)."""
    source = recipe("raw-1M").build(vm.tools, vm.path("source.img"))
    target = recipe("raw-1M").build(vm.tools, vm.path("target.img"))
    vm.add_drive(source, fmt="raw", drive_id="drive0")
    await vm.launch()

    await vm.hmp_qemu_io("drive0", "write -P 0x5a 0 64k")
    await vm.hmp_qemu_io("drive0", "write -P 0xa5 512k 4k")
    await vm.cmd("drive-backup", device="drive0", sync="full", mode="existing", format="raw",
                 target=str(target))
    completed = await vm.event_wait("BLOCK_JOB_COMPLETED", {"data": {"device": "drive0"}})
    assert completed["data"]["offset"] == completed["data"]["len"] == 1048576
    await vm.wait_job_end("drive0")
    assert await vm.cmd("query-block-jobs") == []
    await vm.shutdown()

    assert vm.tools.compare(source, target, "raw").returncode == 0
    with vm.tools.io_session(target, "raw", read_only=True) as session:
        for command in ("read -P 0x5a 0 64k", "read -P 0 64k 448k", "read -P 0xa5 512k 4k",
                        "read -P 0 516k 508k"):
            output = session.run(command)
            assert "Pattern verification failed" not in output
