import sys

from .lm import main

sys.exit(main())
