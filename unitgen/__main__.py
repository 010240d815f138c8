import sys

from unitgen.cli import main

sys.exit(main())
