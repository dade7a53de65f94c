import sys

from instag.cli import main

sys.exit(main())
