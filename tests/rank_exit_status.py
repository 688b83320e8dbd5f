"""Run one rank's command and record the exit status the operating system reports for it (not what the rank
says about itself): `python tests/rank_exit_status.py FOLDER COMMAND...` writes FOLDER/rank-$RANK.json.

Used as the launched program (`deepspeed --no_python --no_local_rank … python tests/rank_exit_status.py …`). The
wrapper itself ignores SIGTERM/SIGINT, so a signal sent to the job's process group reaches the rank, which
handles it, and the wrapper stays to see how the rank ended; the rank gets the default dispositions back.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def restore_default_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


if __name__ == "__main__":
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    folder, command = Path(sys.argv[1]), sys.argv[2:]
    code = subprocess.Popen(command, preexec_fn=restore_default_signals).wait()  # negative: killed by a signal
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"returncode": code}))
    sys.exit(code if code >= 0 else 128 - code)
