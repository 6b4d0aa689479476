"""`python -m ffitool` runs the command line."""

from ffitool.cli.main import main

main()
