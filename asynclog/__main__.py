import sys

from asynclog.cli import main

sys.exit(main())
