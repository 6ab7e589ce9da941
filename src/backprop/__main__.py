import sys

from backprop.cli.main import main

sys.exit(main())
