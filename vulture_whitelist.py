"""False positives of `vulture` on the repository (see [tool.vulture] in pyproject.toml).

vulture only reads this file (nothing imports it): each line uses a name the repository defines but
never reads in Python, and the comment says why that is right.  A name that is dead for real is
removed, not listed here; whole families (pytest fixtures and hooks, decorator-registered tables)
are ignored in pyproject.toml instead.
"""

import sys

import pexpect
from conformance import vm
from conformance.iotests import forkclient
from conformance.qmpfuzz.inputs import InputGenerator
from conformance.report import html
from emulator.block import blkdebug, drain, qcow2, qemu_io
from emulator.commands import hmp, jobs
from emulator.error import ErrorClass
from emulator.versions import UNMODELLED_10_0
from tests import helpers, test_report

# ---- emulator/ ---------------------------------------------------------------------------------

# blkdebug's `immediately` option is accepted and kept with its rule: in QEMU it only decides
# whether the injected error comes back before or after a coroutine yield, which has no
# counterpart in the emulator's synchronous I/O.
blkdebug.BlkdebugRule.immediately

# The qcow2 header's fields are read and written by name (Qcow2Header's field list): the
# snapshot table offset is kept so that a header is written back as it was read.
qcow2.Qcow2Header.snapshots_offset

# qemu-io's commands are looked up by name: command "read" runs QemuIo._cmd_read.
qemu_io.QemuIo._cmd_read
qemu_io.QemuIo._cmd_write
qemu_io.QemuIo._cmd_aio_write
qemu_io.QemuIo._cmd_aio_flush
qemu_io.QemuIo._cmd_flush
qemu_io.QemuIo._cmd_discard
qemu_io.QemuIo._cmd_alloc
qemu_io.QemuIo._cmd_map
qemu_io.QemuIo._cmd_length
qemu_io.QemuIo._cmd_break
qemu_io.QemuIo._cmd_remove_break
qemu_io.QemuIo._cmd_resume
qemu_io.QemuIo._cmd_wait_break
qemu_io.QemuIo._cmd_help
qemu_io.QemuIo._cmd_quit

# The drain model's protocol of a parent with drain callbacks documents what drain.py calls.
drain.DrainedParent

# Handler parameters of QAPI arguments the emulator accepts and ignores: the registry checks that
# every argument has its parameter (human-monitor-command's cpu-index selects a vCPU, and there
# are none; block-job-change's copy-mode is for mirror jobs, and there are none).
hmp.qmp_human_monitor_command.cpu_index
jobs.qmp_block_job_change.copy_mode

# QAPI's QapiErrorClass lists it; no command of the emulator's area raises it.
ErrorClass.KVM_MISSING_CAP

# The 10.0 profile's known gaps, kept as data for people and documents to read.
UNMODELLED_10_0

# PEP 562 module __getattr__ (emulator.qmp imports its server lazily); Python calls it.
__getattr__

# ---- conformance/, tests/ ------------------------------------------------------------------------

# pexpect reads it before each send (None: no 50 ms pause); conformance/imagetools.py and
# tests/test_tools.py set it.
pexpect.spawn.delaybeforesend

# The launcher script that conformance/iotests/runner.py writes as QEMU_PROG (LAUNCHER, a string)
# imports and calls it.
forkclient.run_via

# The fuzz families are looked up by name: family "huge-string" runs InputGenerator._huge_string
# (InputGenerator.generate; FAMILIES lists them).
InputGenerator._valid
InputGenerator._malformed
InputGenerator._truncated
InputGenerator._nesting
InputGenerator._huge_string
InputGenerator._huge_number
InputGenerator._bytes
InputGenerator._bad_utf8
InputGenerator._wrong_type
InputGenerator._unknown_member
InputGenerator._random_name
InputGenerator._pipelined
InputGenerator._disconnect

# The HTML report's template (conformance/report/templates/report.html.j2) reads these.
html.Lane.y
html.Picture.height
html.Picture.plot_left
html.Picture.plot_right
html.CaseRecord.golden_text
html.Case.anchor
html.CaseChange.changed_lines
html.VersionChange.only_old
html.VersionChange.only_new

# Called as a function: qmp_cmd runs `client_of(machine)(command, **arguments)`.
helpers.DispatchClient.__call__

# HTMLParser calls them while it parses (tests/test_report.py's _Dom).
test_report._Dom.handle_starttag
test_report._Dom.handle_endtag
test_report._Dom.handle_data

# tests/test_registry.py: handler parameters misspelt on purpose; the registry must refuse them
# by these names, and nothing calls the handlers.
jobid
nodename

# qemu.qmp calls these hooks on every message (AsyncProtocol._cb_outbound / _cb_inbound); the
# conformance VM's client overrides them to format a message only when the debug log is on.
vm._Client._cb_outbound
vm._Client._cb_inbound

# Read by the import system: where blocktxn's pytest runs keep bytecode (blocktxn_cli/pytest_main.py).
sys.pycache_prefix
