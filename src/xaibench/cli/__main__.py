import sys

from xaibench.cli import main

sys.exit(main())
