"""TensorFlow's C++ log lines kept off a command's standard error.

Standard library only: the serving client, which imports nothing of the zoo
in its serving process, loads this file by its path.
"""

import contextlib
import os
import re
import sys
import threading

# TensorFlow's C++ log lines (`E0000 00:00:... cuda_platform.cc:52] failed
# call to cuInit ...`), the notice absl writes before its first one, and the
# second line of the CPU-instructions notice. They are written before absl's
# logging is initialized, so TF_CPP_MIN_LOG_LEVEL does not reach them.
TENSORFLOW_LOG_LINE = re.compile(
    rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow")


@contextlib.contextmanager
def without_tensorflow_logs():
    """Standard error (the file descriptor, which C++ writes to) through a
    filter that drops `TENSORFLOW_LOG_LINE`s and passes every other line."""
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        # Reads to the end whatever happens to the writes, so that a writer
        # to standard error never blocks on a full pipe.
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if TENSORFLOW_LOG_LINE.match(line):
                    continue
                with contextlib.suppress(OSError):
                    while line:
                        line = line[os.write(real_stderr, line):]

    forwarding = threading.Thread(target=forward, daemon=True)
    forwarding.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # the pipe's last writer: the filter reads to its end
        forwarding.join(timeout=5)
        os.close(real_stderr)
