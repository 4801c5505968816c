import sys

from olladist.cli import main

sys.exit(main())
