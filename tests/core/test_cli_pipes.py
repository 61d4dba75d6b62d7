"""The CLI behaves like a Unix tool when its reader goes away (`genloom components | head -1`)."""

import subprocess
import sys


def test_closed_pipe_gives_no_traceback():
    code = "import sys; from genloom.core.cli import main; sys.exit(main(['components', '--json']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the listing is written out
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode in (0, 141), (proc.returncode, err.decode())
