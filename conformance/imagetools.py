"""qemu-img and qemu-io behind one interface, for both targets.

The qemu target runs the real binaries; the emulator target calls the emulator's own tools
(``emulator.tools.img.main`` / ``emulator.tools.io.main``) in-process, an interactive session
included (in a thread, over pipes: InProcessIoSession).  Cases use the helpers here so that
the same case checks images the same way on both targets.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import select
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pexpect
from pexpect.popen_spawn import PopenSpawn

PROMPT = "qemu-io> "

#: Called as observer(command, output) for each command of an interactive qemu-io session.
SessionObserver = Callable[[str, str], None]
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class ToolResult:
    """Exit status and output of one tool run.  `program` is "qemu-img" or "qemu-io"."""

    program: str
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def moved(self, old: str, new: str) -> ToolResult:
        """This run as it reads for a copy of its image at `new` (see conformance.recipes)."""
        return ToolResult(self.program, tuple(arg.replace(old, new) for arg in self.args), self.returncode,
                          self.stdout.replace(old, new), self.stderr.replace(old, new))

    def command_line(self) -> str:
        return " ".join([self.program, *(_quote(arg) for arg in self.args)])

    def check(self) -> ToolResult:
        """Return self, or raise if the tool failed (for set-up steps that must succeed)."""
        if self.returncode != 0:
            raise AssertionError(
                f"{self.command_line()} exited {self.returncode}:\n{self.output}"
            )
        return self


def _quote(arg: str) -> str:
    return f"'{arg}'" if (not arg or any(c in arg for c in " \"'$")) else arg


class _IoSessionContext:
    """`with` a qemu-io session: closed cleanly after the block, killed if it raised."""

    def close(self) -> int:
        """End the session cleanly; its exit status."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.kill()


class QemuIoSession(_IoSessionContext):
    """An interactive qemu-io (``qemu-io> `` prompt) driven over pipes by pexpect."""

    def __init__(self, argv: Sequence[str], *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 observer: SessionObserver | None = None) -> None:
        self.observer = observer
        self._spawn = PopenSpawn(list(argv), cwd=str(cwd) if cwd else None, env=env,
                                 encoding="utf-8", timeout=timeout)
        self._spawn.delaybeforesend = None
        self.timeout = timeout
        self._spawn.expect_exact(PROMPT)

    def run(self, command: str) -> str:
        """Send one qemu-io command; return its output (everything before the next prompt)."""
        self._spawn.sendline(command)
        self._spawn.expect_exact(PROMPT)
        output = str(self._spawn.before or "")
        if self.observer is not None:
            self.observer(command, output)
        return output

    def close(self) -> int:
        """Quit qemu-io; return its exit status (1 when any command failed)."""
        try:
            self._spawn.sendline("quit")
            self._spawn.expect(pexpect.EOF)
        finally:
            status = self._spawn.wait()
        code = int(status if status is not None else -1)
        if self.observer is not None:
            self.observer(f"quit  # exit {code}", "")
        return code

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._spawn.kill(9)
            self._spawn.wait()



class InProcessIoSession(_IoSessionContext):
    """The emulator's qemu-io work-alike (`main(argv, stdin=, out=, err=)`) run interactively in a
    thread of this process, over pipes: what QemuIoSession does with a child process, without a
    Python interpreter's start-up (about 150 ms) per session.  Standard output and error share
    one pipe, as pexpect's PopenSpawn merges them; every wait is bounded by `timeout`."""

    def __init__(self, entry: Callable[..., int], args: Sequence[str], *,
                 timeout: float = DEFAULT_TIMEOUT, observer: SessionObserver | None = None) -> None:
        self.observer = observer
        self.timeout = timeout
        in_read, in_write = os.pipe()
        out_read, out_write = os.pipe()
        self._stdin = os.fdopen(in_write, "w", encoding="utf-8", buffering=1)
        self._output_fd = out_read
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._eof = False
        self.status: int | None = None
        stdin = os.fdopen(in_read, "r", encoding="utf-8")
        out = os.fdopen(out_write, "w", encoding="utf-8", buffering=1)

        def body() -> None:
            code = 1
            try:
                code = int(entry(list(args), stdin=stdin, out=out, err=out) or 0)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException as error:  # noqa: BLE001 - reported as the session's output
                with contextlib.suppress(OSError, ValueError):
                    out.write(f"qemu-io crashed: {error!r}\n")
            finally:
                self.status = code
                for stream in (out, stdin):
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()

        self._thread = threading.Thread(target=body, name="qemu-io session", daemon=True)
        self._thread.start()
        self._expect_prompt()

    def _read_some(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise pexpect.TIMEOUT(f"no {PROMPT!r} within {self.timeout}s; got {self._pending!r}")
        ready, _, _ = select.select([self._output_fd], [], [], remaining)
        if not ready:
            return
        data = os.read(self._output_fd, 65536)
        if not data:
            self._eof = True
            self._pending += self._decoder.decode(b"", final=True)
            return
        self._pending += self._decoder.decode(data)

    def _expect_prompt(self) -> str:
        deadline = time.monotonic() + self.timeout
        while PROMPT not in self._pending:
            if self._eof:
                raise pexpect.EOF(f"qemu-io ended before its prompt; it printed {self._pending!r}")
            self._read_some(deadline)
        before, _, self._pending = self._pending.partition(PROMPT)
        return before

    def run(self, command: str) -> str:
        """Send one qemu-io command; return its output (everything before the next prompt)."""
        self._stdin.write(command + "\n")
        output = self._expect_prompt()
        if self.observer is not None:
            self.observer(command, output)
        return output

    def _finish(self) -> int:
        deadline = time.monotonic() + self.timeout
        while not self._eof:
            self._read_some(deadline)
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            raise pexpect.TIMEOUT(f"qemu-io did not end within {self.timeout}s")
        os.close(self._output_fd)
        return -1 if self.status is None else self.status

    def close(self) -> int:
        """Quit qemu-io; return its exit status (1 when any command failed)."""
        with contextlib.suppress(OSError, ValueError):
            self._stdin.write("quit\n")
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        code = self._finish()
        if self.observer is not None:
            self.observer(f"quit  # exit {code}", "")
        return code

    def kill(self) -> None:
        """End the session: its stdin closes, so the loop ends (a thread cannot be killed)."""
        with contextlib.suppress(Exception):
            self._stdin.close()
        with contextlib.suppress(Exception):
            self._finish()



class ImageTools(ABC):
    """Common qemu-img / qemu-io operations; subclasses say how a tool is run."""

    #: Same inputs, same image bytes and output (the emulator's tools): a recipe can be built
    #: once and copied (conformance.recipes).  Real QEMU's tools run every time.
    deterministic = False
    #: MAJOR.MINOR of the tools' QEMU profile, when they have one.
    version: str | None = None

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd
        #: Called with every result, e.g. to record tool runs in a case's log.
        self.observer: Callable[[ToolResult], None] | None = None
        #: Called for every interactive-session command (and once with the session's argv).
        self.session_observer: SessionObserver | None = None

    @abstractmethod
    def _run_img(self, args: list[str]) -> tuple[int, str, str]: ...

    @abstractmethod
    def _run_io(self, args: list[str]) -> tuple[int, str, str]: ...

    @abstractmethod
    def io_session_argv(self, args: list[str]) -> list[str]: ...

    def io_session_env(self) -> dict[str, str] | None:
        return None

    def _finish(self, program: str, args: list[str], outcome: tuple[int, str, str]) -> ToolResult:
        result = ToolResult(program, tuple(args), *outcome)
        if self.observer is not None:
            self.observer(result)
        return result

    # ---- raw access -------------------------------------------------------------------------
    def img(self, *args: str) -> ToolResult:
        return self._finish("qemu-img", list(args), self._run_img(list(args)))

    def io(self, *args: str) -> ToolResult:
        return self._finish("qemu-io", list(args), self._run_io(list(args)))

    # ---- qemu-img ---------------------------------------------------------------------------
    def create(self, path: Path | str, fmt: str, size: str | int | None = None, *,
               backing: Path | str | None = None, backing_fmt: str | None = None,
               options: str | None = None) -> ToolResult:
        args = ["create", "-f", fmt]
        if options:
            args += ["-o", options]
        if backing is not None:
            args += ["-b", str(backing), "-F", backing_fmt or fmt]
        args.append(str(path))
        if size is not None:
            args.append(str(size))
        return self.img(*args)

    def info(self, path: Path | str, fmt: str | None = None, *, json_output: bool = False,
             force_share: bool = False) -> ToolResult:
        args = ["info"] + (["-f", fmt] if fmt else []) + (["-U"] if force_share else [])
        args += (["--output=json"] if json_output else []) + [str(path)]
        return self.img(*args)

    def check(self, path: Path | str, fmt: str) -> ToolResult:
        return self.img("check", "-f", fmt, str(path))

    def compare(self, first: Path | str, second: Path | str, fmt1: str, fmt2: str | None = None,
                *, strict: bool = False, force_share: bool = False) -> ToolResult:
        """``qemu-img compare``: rc 0 "Images are identical.", rc 1 on a content mismatch."""
        args = ["compare", "-f", fmt1, "-F", fmt2 or fmt1] + (["-s"] if strict else [])
        args += (["-U"] if force_share else []) + [str(first), str(second)]
        return self.img(*args)

    def map(self, path: Path | str, fmt: str, *, json_output: bool = True) -> ToolResult:
        args = ["map", "-f", fmt] + (["--output=json"] if json_output else []) + [str(path)]
        return self.img(*args)

    # ---- qemu-io ----------------------------------------------------------------------------
    def qemu_io(self, path: Path | str, fmt: str, commands: Sequence[str], *,
                read_only: bool = False, force_share: bool = False) -> ToolResult:
        """Offline ``qemu-io -f FMT [-r] [-U] -c CMD... IMG``."""
        args = ["-f", fmt] + (["-r"] if read_only else []) + (["-U"] if force_share else [])
        for command in commands:
            args += ["-c", command]
        return self.io(*args, str(path))

    def io_session(self, path: Path | str, fmt: str, *, read_only: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> QemuIoSession | InProcessIoSession:
        """An interactive qemu-io on `path` (close it, or use it as a context manager)."""
        args = ["-f", fmt] + (["-r"] if read_only else []) + [str(path)]
        if self.session_observer is not None:
            self.session_observer("", " ".join(["qemu-io", *(_quote(arg) for arg in args)]))
        return self._start_session(args, timeout)

    def _start_session(self, args: list[str], timeout: float) -> QemuIoSession | InProcessIoSession:
        return QemuIoSession(self.io_session_argv(args), cwd=self.cwd, env=self.io_session_env(),
                             timeout=timeout, observer=self.session_observer)


class QemuImageTools(ImageTools):
    """The real qemu-img and qemu-io binaries."""

    def __init__(self, qemu_img: str, qemu_io: str, cwd: Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT, env: dict[str, str] | None = None) -> None:
        super().__init__(cwd)
        self.img_binary = qemu_img
        self.io_binary = qemu_io
        self.timeout = timeout
        self.env = env

    def _run(self, argv: list[str]) -> tuple[int, str, str]:
        done = subprocess.run(argv, cwd=self.cwd, capture_output=True, text=True, env=self.env,
                              timeout=self.timeout, check=False, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout, done.stderr

    def _run_img(self, args: list[str]) -> tuple[int, str, str]:
        return self._run([self.img_binary, *args])

    def _run_io(self, args: list[str]) -> tuple[int, str, str]:
        return self._run([self.io_binary, *args])

    def io_session_argv(self, args: list[str]) -> list[str]:
        return [self.io_binary, *args]

    def io_session_env(self) -> dict[str, str] | None:
        return self.env


class EmulatorImageTools(ImageTools):
    """The emulator's qemu-img/qemu-io, called in-process with their output captured.

    In-process runs share the working directory with everything else, so give absolute paths.
    `version` is the QEMU profile (MAJOR.MINOR) whose tools they behave as.
    """

    deterministic = True

    def __init__(self, cwd: Path | None = None, version: str | None = None) -> None:
        super().__init__(cwd)
        self.version = version

    def _call(self, module_name: str, args: list[str]) -> tuple[int, str, str]:
        import importlib

        entry = importlib.import_module(module_name).main
        out, err = io.StringIO(), io.StringIO()
        # No chdir here: an embedded emulator may be running in another thread, so cases pass
        # absolute paths.  The tools write to the streams they are given (not sys.stdout, which
        # is the whole process's: two tools running in two threads would mix their output).
        try:
            code = entry(list(args), out=out, err=err)
        except SystemExit as exit_:  # argparse-style exits
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        return int(code or 0), out.getvalue(), err.getvalue()

    def _run_img(self, args: list[str]) -> tuple[int, str, str]:
        profile = ["--blocktxn-version", self.version] if self.version else []
        return self._call("emulator.tools.img", [*profile, *args])

    def _run_io(self, args: list[str]) -> tuple[int, str, str]:
        return self._call("emulator.tools.io", args)

    def io_session_argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "emulator.tools.io", *args]

    def _start_session(self, args: list[str], timeout: float) -> QemuIoSession | InProcessIoSession:
        """In this process, like the other tool runs (`io_session_argv` is the equivalent child)."""
        from emulator.tools.io import main as io_main

        return InProcessIoSession(io_main, args, timeout=timeout, observer=self.session_observer)

    def io_session_env(self) -> dict[str, str] | None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        if self.version:
            env["BLOCKTXN_QEMU_VERSION"] = self.version
        return env
