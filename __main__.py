"""`python -m llmctl` runs the command line."""

from llmctl.cli.app import main

main()
