"""``python -m gputime``: the same as the ``gputime`` command."""

import sys

from gputime._cli import main

sys.exit(main())
