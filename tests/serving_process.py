"""One process per pytest worker that serves exports as TF Serving would:
it imports only tensorflow and tensorflow_text (and the serving protos) and
answers the requests the tests give it, export after export.

TF Serving itself loads several models into one server; what an export
must prove is that such a process, with none of keras-hub, the zoo or the
layers imported, loads it and answers. Each check runs its code in a fresh
namespace, and the process refuses to go on once anything of those
packages has been imported (a check that did would prove nothing for the
checks after it). Starting TensorFlow once per worker instead of once per
check saves about 4.5 CPU-seconds a check.
"""

import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap

# The process's own loop: requests on stdin, one JSON line each; replies on
# the pipe that was stdout, while stdout itself goes where stderr goes (a
# library printing at the C level cannot garble a reply).
_SERVER = r"""
import contextlib, io, json, os, sys, traceback

replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
FORBIDDEN = ("keras_hub", "zoo", "keras_selfattn")
for line in sys.stdin:
    request = json.loads(line)
    output = io.StringIO()
    error = None
    try:
        os.chdir(request["cwd"])
        with contextlib.redirect_stdout(output):
            exec(compile(request["code"], "<served check>", "exec"), {"__name__": "__main__"})
    except BaseException:
        error = traceback.format_exc()
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    if leaked:
        error = (error or "") + f"\nthe serving process imported {leaked[:5]}: it is no longer clean"
    replies.write(json.dumps({"stdout": output.getvalue(), "error": error,
                              "clean": not leaked}) + "\n")
    replies.flush()
    if leaked:
        break
"""


class ServingProcess:
    """A clean TensorFlow process, started on first use, that runs checks."""

    def __init__(self, environment):
        self._environment = environment
        self._process = None
        self._log = None

    def run(self, code, cwd, timeout=300):
        """Runs `code` (dedented) with `cwd` as the working folder; returns
        what it printed, or fails with its traceback and the process's log."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        request = json.dumps({"code": textwrap.dedent(code), "cwd": str(cwd)})
        self._process.stdin.write(request + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        reply = self._process.stdout.readline() if ready else ""
        if not reply:
            log = self._log_tail()
            self.close()
            raise AssertionError(f"the serving process gave no answer in {timeout} s:\n{log}")
        reply = json.loads(reply)
        log = self._log_tail() if reply["error"] is not None else ""
        if not reply["clean"]:
            self.close()  # it stops; the next check starts a clean one
        if reply["error"] is not None:
            raise AssertionError(f"{reply['stdout']}\n{reply['error']}\n{log}")
        return reply["stdout"]

    def close(self):
        if self._process is not None:
            self._process.stdin.close()  # its loop ends
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
            self._log.close()

    def _start(self):
        self._log = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=self._environment, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=os.getcwd())

    def _log_tail(self):
        self._log.seek(0)
        return self._log.read()[-3000:]
