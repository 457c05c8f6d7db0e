"""The real CLI in a fresh process per call, without paying for Python's start and unetseg's imports each time.

A server process imports unetseg's CLI and every command module once (torch, OpenCV, Hydra: about 2 s), then
forks a child per request. The child takes the caller's environment and folder, points its stdout and stderr at
files, runs ``unetseg.cli.main(args)`` exactly as ``python -m unetseg args`` would, and exits with its status.
The server never runs a torch operation, so no thread pool exists when it forks. What a fork cannot give is a
different interpreter start: settings read when Python or a library starts (PYTHONPATH, thread counts) need
``python -m unetseg`` itself (conftest.run_cli does that whenever a test passes ``env``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SERVER = r"""
import importlib, json, logging, os, signal, sys, time
import unetseg.cli
for name in ("train", "predict", "evaluate", "export", "synthesize", "report", "cache", "plan"):
    importlib.import_module(f"unetseg.commands.{name}")
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(err, 2)
            sys.argv = ["unetseg", *request["args"]]
            try:
                unetseg.cli.main(request["args"])
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(code)
    deadline, timed_out = time.monotonic() + request["timeout"], False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if not timed_out and time.monotonic() > deadline:  # as subprocess.run(timeout=...) would: kill it
            os.kill(pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.005)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out}), flush=True)
"""


class ForkedCli:
    """``run(*args, cwd=...)``: like ``python -m unetseg args``, in a child forked from a server that has
    imported unetseg; the caller's os.environ (plus ``env``) is the child's environment."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.calls = 0
        self.server: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {key: value for key, value in os.environ.items() if key != "UNETSEG_RUN_STAMP"}
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready", "the CLI server did not start"
        return server

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        if self.server is None or self.server.poll() is not None:
            self.server = self._start()
        self.calls += 1
        out, err = self.scratch / f"{self.calls}.out", self.scratch / f"{self.calls}.err"
        request = {
            "args": list(args),
            "cwd": str(cwd),
            "env": {**os.environ, **(env or {})},
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        assert self.server.stdin is not None and self.server.stdout is not None
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = json.loads(self.server.stdout.readline())
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(["unetseg", *args], timeout)
        return subprocess.CompletedProcess(
            ["unetseg", *args], reply["returncode"], out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8")
        )

    def close(self) -> None:
        if self.server is not None and self.server.stdin is not None:
            self.server.stdin.close()
            self.server.wait(timeout=30)
