"""``python -m kvmm``: the ``kvmm`` command line."""

from kvmm.cli import main

raise SystemExit(main())
