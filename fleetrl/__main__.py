import sys

from fleetrl.cli import main

sys.exit(main())
