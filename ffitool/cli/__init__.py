"""The `ffitool` command line: argument parsing and output only; the work is in the API."""
