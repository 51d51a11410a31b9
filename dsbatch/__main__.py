import sys

from dsbatch._cli import main

sys.exit(main())
