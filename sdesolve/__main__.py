"""``python -m sdesolve``: the command line (see :mod:`sdesolve.cli`)."""
import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A rank of a torchrun job leaves without the interpreter's teardown, its outputs written and
    # its process group left: a C++ object destroyed in that teardown (a thread still joinable)
    # aborted finished ranks now and then ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
