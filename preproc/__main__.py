import sys

from preproc.cli import main

sys.exit(main())
