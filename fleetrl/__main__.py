import sys

try:
    from fleetrl.cli import run
except KeyboardInterrupt:  # Ctrl+C while Python imports fleetrl: a line, not a traceback
    print("fleetrl: interrupted", file=sys.stderr)
    sys.exit(130)

run()
