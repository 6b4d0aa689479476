"""`python -m ffitool` runs the command line."""

from ffitool.cli.app import main

main()
