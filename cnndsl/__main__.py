import sys

from cnndsl.tools.cli import main

sys.exit(main())
