"""`python -m ffitool` runs the command line."""

from ffitool.cli.entry import main

main()
